//! rpath to libtorch for the fuzz driver.
fn main() {
    lpl_torch_build::link_libtorch();
}
