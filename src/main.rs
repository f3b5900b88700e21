fn main() {
    std::process::exit(lambdalet::cli::main());
}
