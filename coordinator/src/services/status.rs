//! Store calls from a request: run off the async workers, and a failure told to
//! the caller as a gRPC status that says little (the detail goes to the log). And the
//! bound on every status message a caller receives.

use tonic::Status;
use tonic::codegen::http;

use crate::store::StoreError;

/// Store failures are our problem, not the caller's: log the detail, say little.
pub(crate) fn internal(e: StoreError) -> Status {
    tracing::error!(error = %e, source = ?std::error::Error::source(&e), "store failure");
    Status::internal("the coordinator's state store failed; see the coordinator log")
}

/// Runs a blocking store operation off the async workers (redb commits fsync).
pub(crate) async fn blocking<T: Send + 'static>(f: impl FnOnce() -> T + Send + 'static) -> Result<T, Status> {
    tokio::task::spawn_blocking(f).await.map_err(|_| Status::internal("a store task panicked"))
}

/// Longest status message sent to a caller, in bytes. Messages quote what the caller sent
/// (a node name, a spec's offending line); a message of 70 KB made the `grpc-message`
/// header larger than the client accepts, so the caller got "h2 protocol error" instead
/// of the reason (found by tests/tests/fuzz_protocol.rs).
pub(crate) const MAX_STATUS_MESSAGE: usize = 2048;

/// Shortens the `grpc-message` of an error response to [`MAX_STATUS_MESSAGE`] bytes (on a
/// character boundary, saying so). Every service's errors pass through it (a layer of the
/// server), so no handler has to remember.
pub(crate) fn bound_status_message<B>(mut response: http::Response<B>) -> http::Response<B> {
    // Percent-encoded, the header is 1 to 3 bytes per byte of the message.
    let long = response.headers().get("grpc-message").is_some_and(|v| v.len() > MAX_STATUS_MESSAGE);
    if !long {
        return response;
    }
    let Some(status) = Status::from_header_map(response.headers()) else { return response };
    let message = status.message();
    if message.len() <= MAX_STATUS_MESSAGE {
        return response;
    }
    let mut end = MAX_STATUS_MESSAGE;
    while !message.is_char_boundary(end) {
        end -= 1;
    }
    let shortened =
        Status::new(status.code(), format!("{}… ({} bytes cut)", &message[..end], message.len() - end));
    let headers = response.headers_mut();
    headers.remove("grpc-message");
    if shortened.add_header(headers).is_err() {
        tracing::debug!("could not shorten a status message");
    }
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    fn response(status: &Status) -> http::Response<()> {
        let mut r = http::Response::new(());
        status.add_header(r.headers_mut()).unwrap();
        r
    }

    #[test]
    fn long_messages_are_cut_on_a_character_boundary_and_short_ones_kept() {
        let long = format!("no node named {:?}", "é".repeat(40_000));
        let r = bound_status_message(response(&Status::not_found(long.clone())));
        let s = Status::from_header_map(r.headers()).unwrap();
        assert_eq!(s.code(), tonic::Code::NotFound);
        assert!(s.message().len() < MAX_STATUS_MESSAGE + 40, "{}", s.message().len());
        assert!(long.starts_with(s.message().split('…').next().unwrap()));
        assert!(s.message().ends_with("bytes cut)"), "{}", s.message());

        let r = bound_status_message(response(&Status::invalid_argument("short")));
        assert_eq!(Status::from_header_map(r.headers()).unwrap().message(), "short");
        let ok = bound_status_message(http::Response::new(()));
        assert!(ok.headers().get("grpc-message").is_none());
    }
}
