//! Image folders: sorted reading with alpha over white, corrupt files skipped and reported,
//! size mismatches named, PNG writing round trip.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use lpl_data::folder::{read_folder, write_pngs};
use tch::{Device, Kind, Tensor};

#[test]
fn corrupt_files_are_skipped_and_reported() {
    let dir = std::env::temp_dir().join(format!("lpl-folder-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(&dir).unwrap();
    // b.png: red, half transparent -> composited onto white
    image::RgbaImage::from_pixel(4, 4, image::Rgba([255, 0, 0, 128]))
        .save(dir.join("b.png"))
        .unwrap();
    image::RgbImage::from_pixel(4, 4, image::Rgb([0, 0, 255])).save(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("c.jpg"), b"this is not a jpeg").unwrap();
    let good = std::fs::read(dir.join("a.png")).unwrap();
    std::fs::write(dir.join("d.png"), &good[..good.len() / 2]).unwrap(); // truncated
    let read = read_folder(&dir, 3).unwrap();
    assert_eq!(read.images.size(), vec![2, 3, 4, 4]);
    let names: Vec<String> =
        read.files.iter().map(|p| p.file_name().unwrap().to_string_lossy().to_string()).collect();
    assert_eq!(names, vec!["a.png", "b.png"]);
    let skipped: Vec<String> = read
        .skipped
        .iter()
        .map(|(p, _)| p.file_name().unwrap().to_string_lossy().to_string())
        .collect();
    assert_eq!(skipped, vec!["c.jpg", "d.png"]);
    // alpha 128 over white: 255 * a + 255 * (1 - a) = 255 for red, 255 * (1 - 128/255) = 127 for green
    let px = Vec::<u8>::try_from(read.images.get(1).select(1, 0).select(1, 0)).unwrap();
    assert_eq!(px, vec![255, 127, 127]);
    // a different size is an error naming the file
    image::RgbImage::from_pixel(5, 4, image::Rgb([0, 0, 0])).save(dir.join("e.png")).unwrap();
    let msg = read_folder(&dir, 3).unwrap_err().to_string();
    assert!(msg.contains("e.png") && msg.contains("5x4"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn png_round_trip() {
    let dir = std::env::temp_dir().join(format!("lpl-pngs-{}", std::process::id()));
    let images = (Tensor::arange(2 * 16, (Kind::Float, Device::Cpu)) / 31.0).view([2, 1, 4, 4]);
    let paths = write_pngs(&images, &dir, 5).unwrap();
    assert!(paths[0].ends_with("000005.png") && paths[1].ends_with("000006.png"));
    let back = read_folder(&dir, 1).unwrap();
    let expected = (images * 255.0).round().to_kind(Kind::Uint8);
    assert!(back.images.equal(&expected));
    std::fs::remove_dir_all(&dir).unwrap();
}
