// rpath to libtorch's lib/ (the binary starts without LD_LIBRARY_PATH) and, where there is
// one, libtorch_cuda linked for real (else CUDA is silently unavailable).
fn main() {
    lpl_torch_build::link_libtorch();
}
