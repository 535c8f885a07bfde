//! TensorBoard event records: the bytes TensorBoard's own writer produced for three events
//! (tests/fixtures/make_tensorboard_fixture.py: header, two scalars, an image) are the bytes
//! lpl writes for them. Exact: the encoding is integer and IEEE bit patterns only.

#![allow(clippy::unwrap_used)] // test helpers: a failed unwrap is a failed test

use lpl_trainer::tensorboard::{SummaryValue, encode_event, frame_record};

#[test]
fn records_equal_tensorboards_own() {
    let fixture = std::fs::read(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("tests/fixtures/tensorboard_events.bin"),
    )
    .unwrap();
    let png = b"\x89PNG fake";
    let image = SummaryValue::Image { png, height: 2, width: 3, channels: 3 };
    let ours: Vec<u8> = [
        encode_event(1_700_000_000.5, 0, &[]),
        encode_event(
            1_700_000_001.25,
            3,
            &[
                ("loss", SummaryValue::Scalar(0.125)),
                ("lpl_masked_fraction/0", SummaryValue::Scalar(0.03)),
            ],
        ),
        encode_event(1_700_000_002.0, 300, &[("samples", image)]),
    ]
    .iter()
    .flat_map(|e| frame_record(e))
    .collect();
    assert_eq!(ours, fixture);
}
