//! What the server takes on at once, decided before it spends anything on a request: images in
//! the pipeline (decoding, waiting, or in a forward pass), decodes running, and photos searched in
//! parts (request bodies: [`super::bodies`]). Refusals are immediate (503), so an overloaded server
//! spends its cores on the requests it accepted instead of decoding images it will not embed; a
//! photo without a place among those searched in parts is searched whole, not refused.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use super::error::ApiError;

pub struct Admission {
    /// Images anywhere between admission and their embedding.
    images: Arc<Semaphore>,
    pub image_capacity: usize,
    /// Decodes (and preprocessing) running at once: one per core.
    decoders: Arc<Semaphore>,
    /// Photos searched in parts at once (a busy photo's windows, narrowed parts and moves; shop
    /// the look; explanations): each costs a dozen images or more beyond its admitted one, run
    /// beside the batcher, so they are counted apart.
    in_parts: Arc<Semaphore>,
}

/// A photo's place among those searched in parts, kept until this is dropped.
pub struct PartsTicket {
    _permit: OwnedSemaphorePermit,
}

/// An admitted image: its place in the pipeline is kept until this is dropped.
pub struct ImageTicket {
    _permit: OwnedSemaphorePermit,
}

impl Admission {
    /// `images`: how many images may be admitted at once; `decoders`: decodes at once;
    /// `in_parts`: photos searched in parts at once.
    pub fn new(images: usize, decoders: usize, in_parts: usize) -> Self {
        Self {
            images: Arc::new(Semaphore::new(images)),
            image_capacity: images,
            decoders: Arc::new(Semaphore::new(decoders.max(1))),
            in_parts: Arc::new(Semaphore::new(in_parts.max(1))),
        }
    }

    /// A place in the image pipeline, waiting at most `wait` for one to free up, else 503. The
    /// wait costs no CPU, and it paces clients that retry at once: refusing them instantly would
    /// spend the cores on refusals (measured with `lookalike bench abuse`).
    pub async fn admit_image(&self, wait: Duration) -> Result<ImageTicket, ApiError> {
        let images = self.images.clone();
        let permit = match images.clone().try_acquire_owned() {
            Ok(permit) => Some(permit),
            Err(_) if wait.is_zero() => None,
            Err(_) => tokio::time::timeout(wait, images.acquire_owned())
                .await
                .ok()
                .map(|p| p.expect("the image semaphore is never closed")),
        };
        permit.map(|permit| ImageTicket { _permit: permit }).ok_or_else(|| {
            ApiError::overloaded(format!(
                "{} images are already being processed; try again shortly",
                self.image_capacity
            ))
        })
    }

    /// A place among the photos searched in parts, waiting at most `wait` for one; `None`: the
    /// photo is searched whole instead.
    pub async fn search_in_parts(&self, wait: Duration) -> Option<PartsTicket> {
        let permit = match self.in_parts.clone().try_acquire_owned() {
            Ok(permit) => permit,
            Err(_) => tokio::time::timeout(wait, self.in_parts.clone().acquire_owned())
                .await
                .ok()?
                .expect("the parts semaphore is never closed"),
        };
        Some(PartsTicket { _permit: permit })
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn admission_refuses_beyond_capacity_after_its_wait_and_frees_on_drop() {
        let admission = Arc::new(Admission::new(2, 1, 1));
        let a = admission.admit_image(Duration::ZERO).await.unwrap();
        let _b = admission.admit_image(Duration::ZERO).await.unwrap();
        assert_eq!(admission.images_in_flight(), 2);
        let refused = admission.admit_image(Duration::from_millis(20)).await;
        assert_eq!(refused.err().unwrap().status.as_u16(), 503);
        let waiting = tokio::spawn({
            let admission = admission.clone();
            async move { admission.admit_image(Duration::from_secs(10)).await.is_ok() }
        });
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(a);
        assert!(waiting.await.unwrap(), "a place freed during the wait is taken");
    }

    #[tokio::test]
    async fn photos_in_parts_are_counted_apart_from_images() {
        let admission = Admission::new(8, 1, 1);
        let first = admission.search_in_parts(Duration::ZERO).await.expect("a free place");
        let taken = admission.search_in_parts(Duration::from_millis(20)).await;
        assert!(taken.is_none(), "the one place is taken");
        assert!(
            admission.admit_image(Duration::ZERO).await.is_ok(),
            "images have their own places"
        );
        drop(first);
        assert!(admission.search_in_parts(Duration::ZERO).await.is_some());
    }
}
