//! The `gradchain-node` binary: parses the command line and hands over to
//! [`node::cli`].

fn main() -> std::process::ExitCode {
    node::cli::main()
}
