fn main() {
    eprintln!("damselfly-bench: not written yet");
}
