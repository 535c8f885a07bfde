//! rpath to libtorch and a real link to libtorch_cuda for this crate's tests and benches.

fn main() {
    lpl_torch_build::link_libtorch();
}
