//! The ADS gRPC service, mounted here rather than through the generated server for the sake of
//! its codec. tonic's default codec holds an 8 KiB encode buffer and an 8 KiB decode buffer for
//! the whole life of each stream, which was over half of zone-cp's memory per stream with
//! 10,000 proxies. Here both start at 1 KiB and grow only for the messages that need more.

use std::convert::Infallible;
use std::marker::PhantomData;

use envoy_types::pb::envoy::service::discovery::v3::aggregated_discovery_service_server::AggregatedDiscoveryService;
use envoy_types::pb::envoy::service::discovery::v3::{DeltaDiscoveryRequest, DiscoveryRequest};
use tonic::codec::{BufferSettings, Codec};
use tonic::codegen::{Arc, Body, BoxFuture, Context, Poll, Service, StdError, http};
use tonic::server::{Grpc, NamedService, StreamingService};
use tonic_prost::{ProstCodec, ProstDecoder, ProstEncoder};

const SOTW: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/StreamAggregatedResources";
const DELTA: &str = "/envoy.service.discovery.v3.AggregatedDiscoveryService/DeltaAggregatedResources";

/// Where a stream's codec buffers start; the yield threshold is tonic's own.
fn buffers() -> BufferSettings {
    BufferSettings::new(1024, 32 << 10)
}

/// prost's codec with [`buffers`].
struct SmallBuffers<T, U>(PhantomData<fn() -> (T, U)>);

impl<T, U> Codec for SmallBuffers<T, U>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    type Encode = T;
    type Decode = U;
    type Encoder = ProstEncoder<T>;
    type Decoder = ProstDecoder<U>;

    fn encoder(&mut self) -> Self::Encoder {
        ProstCodec::<T, U>::raw_encoder(buffers())
    }

    fn decoder(&mut self) -> Self::Decoder {
        ProstCodec::<T, U>::raw_decoder(buffers())
    }
}

fn grpc<T, U>(max_decoding: usize) -> Grpc<SmallBuffers<T, U>>
where
    T: prost::Message + Send + 'static,
    U: prost::Message + Default + Send + 'static,
{
    Grpc::new(SmallBuffers(PhantomData)).max_decoding_message_size(max_decoding)
}

/// Serves `S`'s two ADS methods, state of the world and delta.
pub struct AdsService<S> {
    inner: Arc<S>,
    max_decoding: usize,
}

impl<S> Clone for AdsService<S> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
            max_decoding: self.max_decoding,
        }
    }
}

impl<S> AdsService<S> {
    /// Requests over `max_decoding` bytes end their stream.
    pub fn new(inner: S, max_decoding: usize) -> Self {
        Self {
            inner: Arc::new(inner),
            max_decoding,
        }
    }
}

impl<S> NamedService for AdsService<S> {
    const NAME: &'static str = "envoy.service.discovery.v3.AggregatedDiscoveryService";
}

struct Sotw<S>(Arc<S>);

impl<S: AggregatedDiscoveryService> StreamingService<DiscoveryRequest> for Sotw<S> {
    type Response = envoy_types::pb::envoy::service::discovery::v3::DiscoveryResponse;
    type ResponseStream = S::StreamAggregatedResourcesStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<DiscoveryRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.stream_aggregated_resources(request).await })
    }
}

struct Delta<S>(Arc<S>);

impl<S: AggregatedDiscoveryService> StreamingService<DeltaDiscoveryRequest> for Delta<S> {
    type Response = envoy_types::pb::envoy::service::discovery::v3::DeltaDiscoveryResponse;
    type ResponseStream = S::DeltaAggregatedResourcesStream;
    type Future = BoxFuture<tonic::Response<Self::ResponseStream>, tonic::Status>;

    fn call(&mut self, request: tonic::Request<tonic::Streaming<DeltaDiscoveryRequest>>) -> Self::Future {
        let inner = self.0.clone();
        Box::pin(async move { inner.delta_aggregated_resources(request).await })
    }
}

impl<S, B> Service<http::Request<B>> for AdsService<S>
where
    S: AggregatedDiscoveryService,
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Self::Response, Self::Error>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let (inner, max) = (self.inner.clone(), self.max_decoding);
        match request.uri().path() {
            SOTW => Box::pin(async move { Ok(grpc(max).streaming(Sotw(inner), request).await) }),
            DELTA => Box::pin(async move { Ok(grpc(max).streaming(Delta(inner), request).await) }),
            _ => Box::pin(async { Ok(tonic::Status::unimplemented("no such method").into_http()) }),
        }
    }
}
