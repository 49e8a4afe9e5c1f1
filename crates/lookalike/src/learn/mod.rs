//! Learning on top of the pretrained backbone: dense layers ([`dense`]), heads on frozen features ([`head`], [`train`]),
//! fine-tuning its last blocks ([`trunk`]), a CNN from scratch ([`scratch`]) and the metrics that
//! judge them ([`eval`]).

pub(crate) mod dense;
pub mod descriptors;
pub mod eval;
pub mod head;
pub mod kinds;
pub mod scratch;
pub mod train;
pub(crate) mod trunk;
