//! `outboxctl metrics`: the daemon's numbers in OpenMetrics text, for
//! node_exporter's textfile collector (`outboxctl metrics >
//! /var/lib/node_exporter/textfile/outboxd.prom.$$ && mv ...`) or any
//! scraper. A daemon that is not running is `outboxd_up 0`; one that
//! could not be asked (another account's home, no answer) is
//! `outboxd_scrape_error 1`, with no `outboxd_up`.

use outboxd::exit_code;
use outboxd::paths::Paths;
use outboxd::protocol::{MetricsText, Request};

use crate::daemon::{self, CtlError};
use crate::output::Output;

pub fn run(paths: &Paths, out: &Output) -> u8 {
    let answer = daemon::connect(paths, daemon::ANSWER_TIMEOUT).and_then(|(mut client, _)| {
        client
            .call_as::<MetricsText>(&Request::Metrics)
            .map_err(|e| CtlError::Failed(e.to_string()))
    });
    match answer {
        Ok(metrics) => {
            crate::output::stdout(format_args!("{}", metrics.text));
            exit_code::OK
        }
        Err(CtlError::NotRunning { .. }) => {
            crate::output::stdout(format_args!("{}", outboxd::metrics::render_down()));
            exit_code::NOT_RUNNING
        }
        // Not asked (permission denied, no answer): whether it is up is
        // unknown, which is not `outboxd_up 0`.
        Err(err) => {
            let code = err.exit_code();
            out.error(&err);
            crate::output::stdout(format_args!("{}", outboxd::metrics::render_scrape_error()));
            code
        }
    }
}
