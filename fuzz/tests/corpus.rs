//! Replays the committed corpus through every target on stable Rust.

use std::path::Path;

fn replay(target: &str, f: fn(&[u8])) {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("corpus").join(target);
    let mut n = 0;
    for e in std::fs::read_dir(&dir).unwrap_or_else(|e| panic!("{}: {e}", dir.display())) {
        let p = e.unwrap().path();
        f(&std::fs::read(&p).unwrap());
        n += 1;
    }
    assert!(n > 0, "corpus for {target} is empty");
    println!("{target}: replayed {n} inputs");
}

#[test]
fn frame_decode_corpus() {
    replay("frame_decode", aura_fuzz::frame_decode);
}

#[test]
fn peer_datagrams_corpus() {
    replay("peer_datagrams", aura_fuzz::peer_datagrams);
}

#[test]
fn sim_corpus() {
    replay("sim", aura_fuzz::sim);
}

#[test]
fn consensus_messages_corpus() {
    replay("consensus_messages", aura_fuzz::consensus_messages);
}

#[test]
fn shell_parsers_corpus() {
    replay("shell_parsers", aura_fuzz::shell_parsers);
}
