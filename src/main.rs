mod cli;

use clap::error::ErrorKind;
use clap::Parser;

/// Help and version print as usual; a usage error prints one line (clap's message plus its
/// tip) and exits with clap's status 2.
fn exit_on_usage_error(e: clap::Error) -> ! {
    if matches!(
        e.kind(),
        ErrorKind::DisplayHelp
            | ErrorKind::DisplayVersion
            | ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand
    ) {
        e.exit();
    }
    let text = e.render().to_string();
    let mut lines = text.lines().map(str::trim).filter(|l| !l.is_empty());
    let mut msg = lines
        .next()
        .unwrap_or("error: invalid arguments")
        .to_string();
    let rest: Vec<&str> = lines
        .filter(|l| !l.starts_with("Usage:") && !l.starts_with("For more information"))
        .collect();
    if msg.ends_with(':') {
        // "the following required arguments were not provided:" and the arguments below it.
        let named: Vec<&str> = rest
            .iter()
            .copied()
            .filter(|l| !l.starts_with("tip:"))
            .collect();
        msg.push(' ');
        msg.push_str(&named.join(", "));
    }
    for tip in rest.iter().filter_map(|l| l.strip_prefix("tip:")) {
        msg.push_str(&format!(" (tip:{tip})"));
    }
    eprintln!("{msg}; see --help");
    std::process::exit(2);
}

fn main() {
    let args = cli::Cli::try_parse().unwrap_or_else(|e| exit_on_usage_error(e));
    // Commands that write an output stop at their next check on a signal and leave it as it was
    // (train and study watch signals themselves: they save first).
    use cli::Command::*;
    let signal = match args.command {
        Sample(_) | Export(_) | Data(_) | Report(_) | Eval(_) | Debug(_) => {
            Some("stopping; the output is left as it was")
        }
        // The demo's study saves its current run first; a rerun continues it.
        Demo(_) => Some("stopping after this step; rerun to continue"),
        Train(_) | Study(_) | Inspect(_) | Bench(_) => None,
    }
    .map(|first| a3ft::util::stop::watch_signals(first).1);
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
    // A signal that came while the work finished (after its last check): the output is whole,
    // and the exit status still says that a signal came.
    if result.is_ok() {
        if let Some(sig) = signal
            .as_ref()
            .map(|s| s.load(std::sync::atomic::Ordering::SeqCst))
            .filter(|s| *s != 0)
        {
            eprintln!("signal {sig} came as the command finished; its output is whole");
            std::process::exit(128 + sig);
        }
    }
    if let Err(e) = result {
        let sig = signal.map_or(0, |s| s.load(std::sync::atomic::Ordering::SeqCst));
        if let Some(during) = a3ft::util::stop::stopped_during(&e).filter(|_| sig != 0) {
            // The stop itself ("stopped by a signal") says nothing more than this line.
            if during.is_empty() {
                eprintln!("stopped by signal {sig}; the output is left as it was");
            } else {
                eprintln!("stopped by signal {sig} ({during}); the output is left as it was");
            }
            std::process::exit(128 + sig);
        }
        eprintln!("error: {e:#}");
        std::process::exit(1);
    }
}
