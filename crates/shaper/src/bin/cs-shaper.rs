//! `cs-shaper`: the link shaper as a command, for setting up a slow link by hand.
//!
//! ```text
//! cs-shaper --route 127.0.0.1:2222=127.0.0.1:22 [--route LISTEN=TARGET …] --rtt-ms 40
//!           [--up-ms N --down-ms N] [--bandwidth 10M]
//! ```
//!
//! Prints one line per route (`route LISTEN -> TARGET`) and then reads commands on stdin, one
//! per line: `cut` (close every connection now), `cut-after N` (after N more bytes),
//! `disarm`, `reset` / `close` (the cut style), `rtt MS`, `delay UP_MS DOWN_MS`,
//! `bandwidth RATE|off`, `stats`, `quit`. End of stdin or SIGTERM stops it.

use std::io::BufRead;
use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use clap::Parser;
use cs_shaper::{CutStyle, LinkConfig, Shaper};

/// A TCP proxy that shapes 127.0.0.1 like a slow link.
#[derive(Parser)]
#[command(name = "cs-shaper", version)]
struct Cli {
    /// LISTEN=TARGET, e.g. 127.0.0.1:0=127.0.0.1:22 (port 0: a free one). Repeatable: every
    /// route shares the link.
    #[arg(long, required = true)]
    route: Vec<String>,
    /// Round-trip time added, in ms (half each way).
    #[arg(long, default_value_t = 0.0)]
    rtt_ms: f64,
    /// One-way delay client → target, in ms (overrides half of --rtt-ms).
    #[arg(long)]
    up_ms: Option<f64>,
    /// One-way delay target → client, in ms (overrides half of --rtt-ms).
    #[arg(long)]
    down_ms: Option<f64>,
    /// Bandwidth cap per direction, bytes per second; suffixes K, M, G (powers of 1024).
    #[arg(long)]
    bandwidth: Option<String>,
}

fn ms(v: f64) -> Duration {
    Duration::from_secs_f64(v.max(0.0) / 1000.0)
}

/// "10M" → 10 MiB.
fn parse_rate(s: &str) -> Result<u64> {
    let s = s.trim();
    let (num, mult) = match s.char_indices().last() {
        Some((i, 'k' | 'K')) => (&s[..i], 1u64 << 10),
        Some((i, 'm' | 'M')) => (&s[..i], 1 << 20),
        Some((i, 'g' | 'G')) => (&s[..i], 1 << 30),
        _ => (s, 1),
    };
    let v: f64 = num.parse().with_context(|| format!("bad rate {s:?}"))?;
    if v <= 0.0 {
        bail!("rate must be positive: {s:?}");
    }
    Ok((v * mult as f64) as u64)
}

fn main() -> Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "warn".into()))
        .with_writer(std::io::stderr)
        .init();
    let cli = Cli::parse();
    let mut cfg = LinkConfig::rtt(ms(cli.rtt_ms));
    if let Some(u) = cli.up_ms {
        cfg.up_delay = ms(u);
    }
    if let Some(d) = cli.down_ms {
        cfg.down_delay = ms(d);
    }
    if let Some(b) = &cli.bandwidth {
        cfg.bandwidth = Some(parse_rate(b)?);
    }
    let shaper = Shaper::start(cfg)?;
    for r in &cli.route {
        let (l, t) = r.split_once('=').with_context(|| format!("--route {r:?}: expected LISTEN=TARGET"))?;
        let listen: SocketAddr = l.parse().with_context(|| format!("--route {r:?}: listen address"))?;
        let target: SocketAddr = t.parse().with_context(|| format!("--route {r:?}: target address"))?;
        let addr = shaper.route_on(listen, target)?;
        println!("route {addr} -> {target}");
    }
    eprintln!("cs-shaper: {:?}; commands on stdin (cut, cut-after N, stats, quit, …)", shaper.config());
    for line in std::io::stdin().lock().lines() {
        let line = line?;
        let words: Vec<&str> = line.split_whitespace().collect();
        let r: Result<()> = (|| {
            match words.as_slice() {
                [] => {}
                ["cut"] => shaper.cut_all(),
                ["cut-after", n] => shaper.cut_after(n.parse()?),
                ["disarm"] => shaper.disarm(),
                ["reset"] => shaper.set_cut_style(CutStyle::Reset),
                ["close"] => shaper.set_cut_style(CutStyle::Close),
                ["rtt", v] => {
                    let mut c = LinkConfig::rtt(ms(v.parse()?));
                    c.bandwidth = shaper.config().bandwidth;
                    shaper.set_config(c);
                }
                ["delay", u, d] => {
                    let mut c = shaper.config();
                    c.up_delay = ms(u.parse()?);
                    c.down_delay = ms(d.parse()?);
                    shaper.set_config(c);
                }
                ["bandwidth", "off"] => shaper.set_config(LinkConfig { bandwidth: None, ..shaper.config() }),
                ["bandwidth", v] => {
                    shaper.set_config(LinkConfig { bandwidth: Some(parse_rate(v)?), ..shaper.config() })
                }
                ["stats"] => {
                    let s = shaper.stats();
                    for r in &s.routes {
                        println!(
                            "route {} -> {}: accepted {} open {} up {} B down {} B",
                            r.listen, r.target, r.accepted, r.open, r.bytes_up, r.bytes_down
                        );
                    }
                    println!("cuts {} config {:?} budget {:?}", s.cuts, shaper.config(), shaper.budget());
                }
                ["quit"] => return Err(anyhow::anyhow!("quit")),
                _ => bail!("unknown command {line:?}"),
            }
            Ok(())
        })();
        match r {
            Ok(()) => {}
            Err(e) if e.to_string() == "quit" => break,
            Err(e) => eprintln!("cs-shaper: {e:#}"),
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::parse_rate;

    #[test]
    fn rates() {
        assert_eq!(parse_rate("10M").unwrap(), 10 << 20);
        assert_eq!(parse_rate("512k").unwrap(), 512 << 10);
        assert_eq!(parse_rate("1000").unwrap(), 1000);
        assert!(parse_rate("0").is_err());
        assert!(parse_rate("x").is_err());
    }
}
