//! Answers from Kinde (token and meter endpoints alike) are read through one size cap, so
//! a hostile or broken server cannot make the client buffer an unbounded body.

/// Bodies are read up to this many bytes: Kinde's answers are a few hundred bytes.
pub(crate) const MAX_BODY: usize = 64 * 1024;

/// A body read up to [`MAX_BODY`].
pub(crate) struct Capped {
    /// At most [`MAX_BODY`] bytes.
    pub(crate) bytes: Vec<u8>,
    /// Whether the body went on past [`MAX_BODY`]: the rest was never read.
    pub(crate) cut: bool,
}

/// The cap of the billing look-ups, whose pages list agreements with every
/// entitlement of their plans.
pub(crate) const MAX_READ_BODY: usize = 4 * 1024 * 1024;

/// Reads at most [`MAX_BODY`] bytes of `response`, then stops: dropping the response
/// closes the connection instead of draining the rest.
pub(crate) async fn read_capped(response: reqwest::Response) -> Result<Capped, reqwest::Error> {
    read_capped_to(response, MAX_BODY).await
}

/// [`read_capped`] with another cap.
pub(crate) async fn read_capped_to(
    mut response: reqwest::Response,
    max: usize,
) -> Result<Capped, reqwest::Error> {
    let mut bytes = Vec::new();
    while let Some(chunk) = response.chunk().await? {
        let room = max - bytes.len();
        if chunk.len() > room {
            bytes.extend_from_slice(&chunk[..room]);
            return Ok(Capped { bytes, cut: true });
        }
        bytes.extend_from_slice(&chunk);
    }
    Ok(Capped { bytes, cut: false })
}
