//! `gridward observe`: the live stream, as a table for people or JSON lines
//! for machines, filtered on the client side.

use std::process::ExitCode;

use clap::Args;

use super::{CliResult, Output, Target};
use crate::{
    api::{self, StreamLine, client::ClientError},
    events::EventRecord,
};

#[derive(Debug, Args)]
pub struct ObserveArgs {
    #[command(flatten)]
    pub target: Target,
    /// Output format: a readable table, or one JSON object per line.
    #[arg(long, short, value_enum, default_value_t = Output::Text)]
    pub output: Output,
    /// Only events whose source or destination identity contains this text
    /// (repeatable: any of them).
    #[arg(long)]
    pub identity: Vec<String>,
    /// Only these verdicts: allow, deny, would-deny (repeatable).
    #[arg(long, value_parser = ["allow", "deny", "would-deny"])]
    pub verdict: Vec<String>,
    /// Only this destination port (repeatable).
    #[arg(long)]
    pub port: Vec<u16>,
    /// Stop after this many events.
    #[arg(long)]
    pub count: Option<u64>,
}

impl ObserveArgs {
    fn matches(&self, event: &EventRecord) -> bool {
        let identity_ok = self.identity.is_empty()
            || self.identity.iter().any(|f| event.src.contains(f) || event.dst.contains(f));
        let verdict_ok = self.verdict.is_empty() || self.verdict.contains(&event.verdict);
        let port_ok = self.port.is_empty() || self.port.contains(&event.dst_port);
        identity_ok && verdict_ok && port_ok
    }
}

pub async fn observe(args: ObserveArgs) -> CliResult {
    let socket = args.target.socket()?;
    let mut stream = api::client::Connection::open(&socket, &api::Request::Observe).await?;
    if args.output == Output::Text {
        let header = ["TIME", "VERDICT", "SOURCE", "DESTINATION", "PORT"];
        println!(
            "{:<24} {:<10} {:<44} {:<44} {:<9} WHY",
            header[0], header[1], header[2], header[3], header[4]
        );
    }
    let mut shown = 0u64;
    while args.count.is_none_or(|limit| shown < limit) {
        let line: StreamLine = match stream.next().await {
            Ok(line) => line,
            Err(ClientError::Closed) => {
                eprintln!("gridward: the agent closed the stream (it stopped or restarted)");
                return Ok(ExitCode::from(1));
            }
            Err(error) => return Err(error.into()),
        };
        match line {
            StreamLine::Event(event) if args.matches(&event) => {
                print_event(&event, args.output)?;
                shown += 1;
            }
            StreamLine::Event(_) => {}
            StreamLine::Lagged { lagged } => {
                eprintln!("gridward: {lagged} events skipped (this observer fell behind)")
            }
        }
    }
    Ok(ExitCode::SUCCESS)
}

fn print_event(event: &EventRecord, output: Output) -> Result<(), serde_json::Error> {
    if output == Output::Json {
        println!("{}", serde_json::to_string(event)?);
        return Ok(());
    }
    let why = match &event.rule {
        Some(rule) => format!("{} ({rule})", event.reason),
        None => event.reason.clone(),
    };
    let repeats = if event.repeats > 1 { format!(" x{}", event.repeats) } else { String::new() };
    let origin = match (event.hook.as_str(), event.pid) {
        ("peering", _) => format!(" [peer {}]", event.dst_addr),
        (_, 0) => format!(" [{}]", event.hook),
        _ => format!(" [{} pid {}]", event.comm, event.pid),
    };
    println!(
        "{:<24} {:<10} {:<44} {:<44} {:<9} {why}{repeats}{origin}",
        event.time,
        event.verdict,
        event.src,
        event.dst,
        format!("{}/{}", event.dst_port, event.protocol),
    );
    Ok(())
}
