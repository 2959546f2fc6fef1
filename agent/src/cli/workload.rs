//! `gridward workload fetch`: the workload's side of the SPIFFE Workload
//! API, as a process would use it (through the real client library), to
//! see which identity the agent gives the calling process.

use std::{path::PathBuf, process::ExitCode};

use super::CliResult;

pub async fn fetch(socket: Option<PathBuf>) -> CliResult {
    let endpoint = match socket {
        Some(path) => format!("unix:{}", path.display()),
        None => std::env::var("SPIFFE_ENDPOINT_SOCKET").map_err(
            |_| "give --socket, or set SPIFFE_ENDPOINT_SOCKET to the agent's Workload API socket",
        )?,
    };
    let client = spiffe::WorkloadApiClient::connect_to(&endpoint).await?;
    match client.fetch_x509_svid().await {
        Ok(svid) => {
            println!("{}", svid.spiffe_id());
            eprintln!("chain of {} certificate(s)", svid.cert_chain().len());
            Ok(ExitCode::SUCCESS)
        }
        Err(error) => {
            eprintln!("no SVID for this process: {error}");
            Ok(ExitCode::from(1))
        }
    }
}
