use clap::Parser;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    let cli = kube_beat::cli::Cli::parse();
    match kube_beat::cli::run(cli).await {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}
