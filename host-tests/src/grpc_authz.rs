//! A gRPC ext_authz server (`envoy.service.auth.v3.Authorization/Check`) on
//! tonic, answering each CheckRequest as the test's script says: a
//! CheckResponse, a gRPC error, raw bytes that are no CheckResponse, or any of
//! them late. It keeps every CheckRequest it saw.
//!
//! The answer is encoded by a codec of its own (bytes out, a prost
//! CheckRequest in), so a script can send garbage as well as real messages.

use std::net::TcpListener as StdListener;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::thread::JoinHandle;
use std::time::Duration;

pub use envoy_types::pb::envoy::service::auth::v3::{
    check_response, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
};
use prost::Message;
use tonic::codec::{Codec, DecodeBuf, Decoder, EncodeBuf, Encoder};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::server::{NamedService, UnaryService};
use tonic::Status;

/// What the server answers one check with.
#[derive(Clone, Debug)]
pub enum Answer {
    Response(Box<CheckResponse>),
    /// A gRPC error status instead of a message.
    Error(tonic::Code, String),
    /// These bytes as the response message (need not decode).
    Raw(Vec<u8>),
    /// The answer, after a while.
    Late(Duration, Box<Answer>),
}

type Script = dyn Fn(&CheckRequest) -> Answer + Send + Sync;

#[derive(Clone)]
struct Shared {
    script: Arc<Script>,
    seen: Arc<Mutex<Vec<CheckRequest>>>,
}

pub struct GrpcAuthz {
    port: u16,
    seen: Arc<Mutex<Vec<CheckRequest>>>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<JoinHandle<()>>,
}

impl GrpcAuthz {
    /// Starts the server on a free loopback port (h2c, as Envoy's gRPC client
    /// speaks to a cluster with HTTP/2 options).
    pub fn start(script: impl Fn(&CheckRequest) -> Answer + Send + Sync + 'static) -> GrpcAuthz {
        let listener = StdListener::bind("127.0.0.1:0").expect("bind the gRPC ext_authz server");
        let port = listener.local_addr().unwrap().port();
        listener.set_nonblocking(true).unwrap();
        let seen = Arc::new(Mutex::new(Vec::new()));
        let shared = Shared {
            script: Arc::new(script),
            seen: seen.clone(),
        };
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let thread = std::thread::spawn(move || {
            let rt = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            rt.block_on(async move {
                let listener = tokio::net::TcpListener::from_std(listener).unwrap();
                let incoming = tokio_stream::wrappers::TcpListenerStream::new(listener);
                tonic::transport::Server::builder()
                    .add_service(AuthorizationService(shared))
                    .serve_with_incoming_shutdown(incoming, async {
                        let _ = stopped.await;
                    })
                    .await
                    .unwrap();
            });
        });
        GrpcAuthz {
            port,
            seen,
            stop: Some(stop),
            thread: Some(thread),
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// Every CheckRequest received so far, in order.
    pub fn seen(&self) -> Vec<CheckRequest> {
        self.seen.lock().unwrap().clone()
    }

    pub fn clear_seen(&self) {
        self.seen.lock().unwrap().clear();
    }
}

impl Drop for GrpcAuthz {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}

/// An allowing CheckResponse with these edits.
pub fn ok(ok_response: OkHttpResponse) -> Answer {
    Answer::Response(Box::new(CheckResponse {
        status: Some(status(0)),
        http_response: Some(check_response::HttpResponse::OkResponse(ok_response)),
        ..CheckResponse::default()
    }))
}

/// A denying CheckResponse (`code`: the gRPC status code in `status`).
pub fn denied(code: i32, denied_response: Option<DeniedHttpResponse>) -> Answer {
    Answer::Response(Box::new(CheckResponse {
        status: Some(status(code)),
        http_response: denied_response.map(check_response::HttpResponse::DeniedResponse),
        ..CheckResponse::default()
    }))
}

fn status(code: i32) -> envoy_types::pb::google::rpc::Status {
    envoy_types::pb::google::rpc::Status {
        code,
        ..Default::default()
    }
}

#[derive(Clone)]
struct AuthorizationService(Shared);

impl NamedService for AuthorizationService {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

impl<B> Service<http::Request<B>> for AuthorizationService
where
    B: tonic::codegen::Body + Send + 'static,
    B::Error: Into<tonic::codegen::StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = std::convert::Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        let shared = self.0.clone();
        if req.uri().path() != "/envoy.service.auth.v3.Authorization/Check" {
            return Box::pin(async move {
                Ok(Status::unimplemented("only Check is served").into_http())
            });
        }
        Box::pin(async move {
            let mut grpc = tonic::server::Grpc::new(RawCodec);
            Ok(grpc.unary(Check(shared), req).await)
        })
    }
}

struct Check(Shared);

impl UnaryService<CheckRequest> for Check {
    type Response = Vec<u8>;
    type Future = BoxFuture<tonic::Response<Vec<u8>>, Status>;

    fn call(&mut self, request: tonic::Request<CheckRequest>) -> Self::Future {
        let shared = self.0.clone();
        Box::pin(async move {
            let request = request.into_inner();
            let mut answer = (shared.script)(&request);
            shared.seen.lock().unwrap().push(request);
            loop {
                match answer {
                    Answer::Late(d, next) => {
                        tokio::time::sleep(d).await;
                        answer = *next;
                    }
                    Answer::Response(r) => return Ok(tonic::Response::new(r.encode_to_vec())),
                    Answer::Raw(bytes) => return Ok(tonic::Response::new(bytes)),
                    Answer::Error(code, message) => return Err(Status::new(code, message)),
                }
            }
        })
    }
}

/// Decodes CheckRequests, sends answer bytes as they are.
#[derive(Clone, Copy, Default)]
struct RawCodec;

impl Codec for RawCodec {
    type Encode = Vec<u8>;
    type Decode = CheckRequest;
    type Encoder = RawCodec;
    type Decoder = RawCodec;

    fn encoder(&mut self) -> Self::Encoder {
        RawCodec
    }

    fn decoder(&mut self) -> Self::Decoder {
        RawCodec
    }
}

impl Encoder for RawCodec {
    type Item = Vec<u8>;
    type Error = Status;

    fn encode(&mut self, item: Vec<u8>, dst: &mut EncodeBuf<'_>) -> Result<(), Status> {
        use prost::bytes::BufMut;
        dst.put_slice(&item);
        Ok(())
    }
}

impl Decoder for RawCodec {
    type Item = CheckRequest;
    type Error = Status;

    fn decode(&mut self, src: &mut DecodeBuf<'_>) -> Result<Option<CheckRequest>, Status> {
        CheckRequest::decode(src)
            .map(Some)
            .map_err(|e| Status::internal(e.to_string()))
    }
}
