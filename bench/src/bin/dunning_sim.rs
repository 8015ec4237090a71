//! `dunning_sim [--seeds N] [--invoices N] [--population timing|flat]`: fixed
//! retry schedules against learned retry timing on a simulated population
//! (docs/smart_retries.md); prints a table and a JSON line.

use std::process::ExitCode;

use recur_bench::dunning_sim::{Population, SimOptions, run};

fn main() -> ExitCode {
    let mut options = SimOptions::default();
    let mut args = std::env::args().skip(1);
    while let Some(flag) = args.next() {
        let value = args.next().unwrap_or_default();
        let parsed = match flag.as_str() {
            "--seeds" => value.parse().map(|n| options.seeds = n).is_ok(),
            "--invoices" => value.parse().map(|n| options.invoices_per_year = n).is_ok(),
            "--population" => match value.as_str() {
                "timing" => {
                    options.population = Population::Timing;
                    true
                }
                "flat" => {
                    options.population = Population::Flat;
                    true
                }
                _ => false,
            },
            _ => false,
        };
        if !parsed {
            eprintln!(
                "usage: dunning_sim [--seeds N] [--invoices N] [--population timing|flat] ({flag} {value}?)"
            );
            return ExitCode::from(2);
        }
    }
    match run(&options) {
        Ok(_) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("dunning_sim: {error}");
            ExitCode::FAILURE
        }
    }
}
