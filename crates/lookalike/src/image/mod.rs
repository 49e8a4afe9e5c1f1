//! Images: bytes -> pixels ([`decode`], bounded before anything is allocated) -> the network's
//! input tensor ([`preprocess`], computed only for the crop the network sees). [`augment`] makes
//! training views; [`hostile`] makes the malformed and oversized files the rest is tested against.

pub mod augment;
pub mod decode;
pub mod hostile;
pub mod jpeg;
pub mod preprocess;

pub use decode::{
    decode_image, load_image, read_image_file, ImageError, MAX_DECODED_BYTES, MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE,
};
pub use preprocess::Preprocessing;
