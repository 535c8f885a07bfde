//! Image folders: sorted reading with alpha over white, corrupt files skipped and reported,
//! the skip tolerance, size mismatches named, PNG writing round trip, class sub-folders with
//! resizing, and the Noto emoji set when it is installed.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use lpl_data::NotoEmoji;
use lpl_data::folder::{ReadOptions, read_folder, write_pngs};
use lpl_data::preprocess::ResizeMode;
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
    // two of four files are bad: over the default 1% tolerance, an error naming the first
    let msg = read_folder(&dir, &ReadOptions::new(3)).unwrap_err().to_string();
    assert!(msg.contains("2 of 4") && msg.contains("c.jpg"), "{msg}");
    let read = read_folder(&dir, &ReadOptions::new(3).max_skipped(0.5)).unwrap();
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
    let msg = read_folder(&dir, &ReadOptions::new(3).max_skipped(0.5)).unwrap_err().to_string();
    assert!(msg.contains("e.png") && msg.contains("5x4"), "{msg}");
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn png_round_trip() {
    let dir = std::env::temp_dir().join(format!("lpl-pngs-{}", std::process::id()));
    let images = (Tensor::arange(2 * 16, (Kind::Float, Device::Cpu)) / 31.0).view([2, 1, 4, 4]);
    let paths = write_pngs(&images, &dir, 5).unwrap();
    assert!(paths[0].ends_with("000005.png") && paths[1].ends_with("000006.png"));
    let back = read_folder(&dir, &ReadOptions::new(1)).unwrap();
    let expected = (images * 255.0).round().to_kind(Kind::Uint8);
    assert!(back.images.equal(&expected));
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn class_subfolders_are_labels_and_images_are_resized() {
    let dir = std::env::temp_dir().join(format!("lpl-classes-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    // sizes differ between files: resizing makes them agree
    for (class, n, w, h) in [("cat", 2u32, 40u32, 30u32), ("ant", 3, 17, 33)] {
        std::fs::create_dir_all(dir.join(class)).unwrap();
        for i in 0..n {
            image::RgbImage::from_pixel(w, h, image::Rgb([10 * i as u8, 100, 200]))
                .save(dir.join(class).join(format!("{i}.png")))
                .unwrap();
        }
    }
    std::fs::write(dir.join("README.txt"), "not an image").unwrap();
    let msg = read_folder(&dir, &ReadOptions::new(3)).unwrap_err().to_string();
    assert!(msg.contains("set a size"), "{msg}");
    for mode in [ResizeMode::AdmCenterCrop, ResizeMode::Area, ResizeMode::Bicubic] {
        let read = read_folder(&dir, &ReadOptions::new(3).resized(8, mode)).unwrap();
        assert_eq!(read.images.size(), vec![5, 3, 8, 8]);
        assert_eq!(read.classes, vec!["ant", "cat"]);
        let labels = Vec::<i64>::try_from(read.labels.unwrap()).unwrap();
        assert_eq!(labels, vec![0, 0, 0, 1, 1]);
        // constant-colour images stay constant through every resize
        let first = Vec::<u8>::try_from(read.images.get(4).flatten(0, -1)).unwrap();
        assert!(first[..64].iter().all(|&v| v == 10) && first[64..128].iter().all(|&v| v == 100));
    }
    std::fs::remove_dir_all(&dir).unwrap();
}

#[test]
fn noto_emoji_set_has_ten_categories() {
    let dir = lpl_test_assets::Asset::NotoEmoji.require();
    let (files, classes) = NotoEmoji::list(&dir).unwrap();
    assert_eq!(files.len(), 3786);
    assert_eq!(classes.len(), 10);
    assert!(classes.contains(&"Smileys & Emotion".to_string()));
    // decode a slice of it: 64x64 RGB over white
    let read = NotoEmoji::load(&dir, &ReadOptions::new(3)).unwrap();
    assert_eq!(read.images.size(), vec![3786, 3, 64, 64]);
    assert!(read.skipped.is_empty());
    // the corners of an emoji are transparent, hence white
    let corner = Vec::<u8>::try_from(read.images.get(0).select(1, 0).select(1, 0)).unwrap();
    assert_eq!(corner, vec![255, 255, 255]);
}
