//! Observable state and the spawn helper.
//!
//! Every actor implements [`Observable`] and answers the one generic
//! [`Observe<A>`] message. A blanket `impl<A: Observable> Handler<Observe<A>>
//! for A` is not allowed (actix's `Handler` is foreign to the crates that
//! define the actors), so each actor writes `cs_supervision::observable!(MyActor);`
//! next to its `Observable` impl.

use std::marker::PhantomData;

use actix::dev::Request;
use actix::{Actor, Addr, Context, Handler, Message};
use serde::Serialize;

use crate::MAILBOX_CAPACITY;

/// An actor whose state `cs-actor status` shows.
pub trait Observable: Actor {
    /// The snapshot: what status prints and what tests assert on.
    type State: Clone + Serialize + Send + 'static;

    /// A snapshot of the state now. Cheap and never blocking: it runs on
    /// the actor.
    fn observe(&self) -> Self::State;
}

/// The one observe message: answered with `A::State`.
pub struct Observe<A>(PhantomData<fn() -> A>);

impl<A> Observe<A> {
    pub fn new() -> Self {
        Observe(PhantomData)
    }
}

impl<A> Default for Observe<A> {
    fn default() -> Self {
        Self::new()
    }
}

impl<A: Observable> Message for Observe<A> {
    type Result = A::State;
}

/// Writes the `Handler<Observe<A>>` of an [`Observable`] actor.
#[macro_export]
macro_rules! observable {
    ($actor:ty) => {
        impl $crate::actix::Handler<$crate::Observe<$actor>> for $actor {
            type Result = $crate::actix::MessageResult<$crate::Observe<$actor>>;
            fn handle(&mut self, _: $crate::Observe<$actor>, _: &mut Self::Context) -> Self::Result {
                $crate::actix::MessageResult($crate::Observable::observe(self))
            }
        }
    };
}

/// `addr.observe().await`: the actor's state, or a mailbox error if it is gone.
pub trait ObserveExt<A>
where
    A: Observable<Context = Context<A>> + Handler<Observe<A>>,
{
    fn observe(&self) -> Request<A, Observe<A>>;
}

impl<A> ObserveExt<A> for Addr<A>
where
    A: Observable<Context = Context<A>> + Handler<Observe<A>>,
{
    fn observe(&self) -> Request<A, Observe<A>> {
        self.send(Observe::new())
    }
}

/// Starts `actor` with the default mailbox capacity, [`MAILBOX_CAPACITY`].
pub fn spawn<A: Actor<Context = Context<A>>>(actor: A) -> Addr<A> {
    spawn_with(MAILBOX_CAPACITY, |_| actor)
}

/// Starts the actor `make` builds (it may use the context, e.g. for its own
/// address) with a mailbox of `capacity` messages.
pub fn spawn_with<A, F>(capacity: usize, make: F) -> Addr<A>
where
    A: Actor<Context = Context<A>>,
    F: FnOnce(&mut Context<A>) -> A,
{
    A::create(move |ctx| {
        ctx.set_mailbox_capacity(capacity);
        make(ctx)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    struct Counter(u32);
    impl Actor for Counter {
        type Context = Context<Self>;
    }
    impl Observable for Counter {
        type State = u32;
        fn observe(&self) -> u32 {
            self.0
        }
    }
    crate::observable!(Counter);

    #[derive(Message)]
    #[rtype(result = "()")]
    struct Ping;
    impl Handler<Ping> for Counter {
        type Result = ();
        fn handle(&mut self, _: Ping, _: &mut Context<Self>) {}
    }

    #[actix::test]
    async fn observe_answers_the_state() {
        let addr = spawn(Counter(7));
        assert_eq!(addr.observe().await.ok(), Some(7));
    }

    #[actix::test]
    async fn the_spawned_mailbox_is_bounded() {
        let addr = spawn_with(2, |_| Counter(0));
        // The actor has not run yet (this test holds the thread): the
        // mailbox takes its capacity, then refuses.
        let mut refused = false;
        for _ in 0..16 {
            if addr.try_send(Ping).is_err() {
                refused = true;
                break;
            }
        }
        assert!(refused, "a bounded mailbox refuses try_send once full");
    }
}
