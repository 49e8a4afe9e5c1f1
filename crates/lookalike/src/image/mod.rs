//! Images: bytes -> pixels ([`decode`], bounded before anything is allocated) -> the network's
//! input tensor ([`preprocess`], computed only for the crop the network sees). [`augment`] makes
//! training views; [`hostile`] makes the malformed and oversized files the rest is tested against.

pub(crate) mod augment;
pub mod cutout;
pub(crate) mod decode;
pub mod hostile;
pub(crate) mod jpeg;
pub(crate) mod preprocess;

pub use decode::{
    decode_image, decode_photo, load_image, read_image_file, ImageError, Photo, MAX_DECODED_BYTES,
    MAX_IMAGE_FILE_BYTES, MAX_IMAGE_SIDE,
};
pub use preprocess::Preprocessing;
