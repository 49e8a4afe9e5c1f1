//! What the server takes on at once, decided before it spends anything on a request: request
//! bodies held in memory, images in the pipeline (decoding, waiting, or in a forward pass), and
//! decodes running. Refusals are immediate (503), so an overloaded server spends its cores on
//! the requests it accepted instead of decoding images it will not embed.

use std::sync::Arc;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

pub struct Admission {
    /// KiB of request bodies held.
    body_kib: Arc<Semaphore>,
    body_kib_total: usize,
    /// Images anywhere between admission and their embedding.
    images: Arc<Semaphore>,
    pub image_capacity: usize,
    /// Decodes (and preprocessing) running at once: one per core.
    decoders: Arc<Semaphore>,
}

/// An admitted image: its place in the pipeline is kept until this is dropped.
pub struct ImageTicket {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// `images`: how many images may be admitted at once; `decoders`: decodes at once;
    /// `body_bytes`: bytes of request bodies held at once.
    pub fn new(images: usize, decoders: usize, body_bytes: usize) -> Self {
        Self {
            body_kib: Arc::new(Semaphore::new(kib(body_bytes))),
            body_kib_total: kib(body_bytes),
            images: Arc::new(Semaphore::new(images)),
            image_capacity: images,
            decoders: Arc::new(Semaphore::new(decoders.max(1))),
        }
    }

    /// Room for a body of `bytes`, or `None` when the bodies already held fill the budget.
    pub fn hold_body(&self, bytes: usize) -> Option<OwnedSemaphorePermit> {
        let wanted = kib(bytes).clamp(1, self.body_kib_total.max(1)) as u32;
        self.body_kib.clone().try_acquire_many_owned(wanted).ok()
    }

    /// A place in the image pipeline, or 503 when it is full.
    pub fn admit_image(&self) -> Result<ImageTicket, ApiError> {
        match self.images.clone().try_acquire_owned() {
            Ok(permit) => Ok(ImageTicket { _permit: permit }),
            Err(_) => Err(ApiError::overloaded(format!(
                "{} images are already being processed; try again shortly",
                self.image_capacity
            ))),
        }
    }

    /// Waits for a decoder; the decode runs while the returned permit lives.
    pub async fn decoder(&self) -> OwnedSemaphorePermit {
        self.decoders
            .clone()
            .acquire_owned()
            .await
            .expect("the decoder semaphore is never closed")
    }

    /// Images admitted now.
    pub fn images_in_flight(&self) -> usize {
        self.image_capacity - self.images.available_permits()
    }
}

fn kib(bytes: usize) -> usize {
    bytes.div_ceil(1024).min(u32::MAX as usize)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn admission_refuses_beyond_capacity_and_frees_on_drop() {
        let admission = Admission::new(2, 1, 10 * 1024);
        let a = admission.admit_image().unwrap();
        let _b = admission.admit_image().unwrap();
        assert_eq!(admission.images_in_flight(), 2);
        assert_eq!(admission.admit_image().err().unwrap().status.as_u16(), 503);
        drop(a);
        assert!(admission.admit_image().is_ok());

        let body = admission.hold_body(8 * 1024).unwrap();
        assert!(admission.hold_body(4 * 1024).is_none());
        drop(body);
        assert!(admission.hold_body(4 * 1024).is_some());
    }
}
