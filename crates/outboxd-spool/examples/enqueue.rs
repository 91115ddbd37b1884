//! A producer: enqueue one event into a home's spool, whether or not the
//! daemon runs.
//!
//! `cargo run -p outboxd-spool --example enqueue -- HOME TOPIC JSON`

use outboxd_spool::{NewEvent, Spool};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [home, topic, payload] = args.as_slice() else {
        return Err("usage: enqueue HOME TOPIC JSON".into());
    };
    let mut spool = Spool::open(home.as_ref())?;
    let enqueued = spool.enqueue(&NewEvent::new(topic, payload))?;
    println!("seq {}", enqueued.seq);
    Ok(())
}
