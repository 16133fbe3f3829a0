mod cli;

use clap::Parser;

fn main() {
    let args = cli::Cli::parse();
    let result = match args.command {
        cli::Command::Train(a) => cli::train::run(a),
        cli::Command::Sample(a) => cli::sample::run(a),
        cli::Command::Inspect(a) => cli::inspect::run(a),
        cli::Command::Export(a) => cli::export::run(a),
        cli::Command::Bench(a) => cli::bench::run(a),
        cli::Command::Data(a) => cli::data::run(a),
        cli::Command::Eval(a) => cli::eval::run(a),
        cli::Command::Report(a) => cli::report::run(a),
        cli::Command::Demo(a) => cli::demo::run(a),
        cli::Command::Study(a) => cli::study::run(a),
        cli::Command::Debug(a) => cli::debug::run(a),
    };
    if let Err(e) = result {
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
