//! Compiles `proto/` without a system `protoc`: protox parses the files in pure Rust, and its
//! descriptor set feeds tonic's codegen, pbjson's serde codegen and the reflection service.
fn main() -> Result<(), Box<dyn std::error::Error>> {
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR")?);
    let mut compiler = protox::Compiler::new(["proto"])?;
    compiler.include_imports(true).include_source_info(true);
    compiler.open_file("eventgateway/v1/gateway.proto")?;
    // Encoded by protox itself so custom options (the google.api.http rules) survive; going
    // through prost_types would drop them as unknown fields.
    let bytes = compiler.encode_file_descriptor_set();
    let fds = compiler.file_descriptor_set();
    std::fs::write(out.join("eventgateway_descriptor.bin"), &bytes)?;
    // Two passes, so the generated code keeps the layers (ARCHITECTURE.md): the messages in
    // OUT_DIR for `crate::proto`, which the core reads; the gRPC client and server, which
    // name the transport's codec, in OUT_DIR/grpc for `crate::transport::grpc`.
    tonic_prost_build::configure()
        .build_client(false)
        .build_server(false)
        // Required with the extern_path below: prost-build maps .google.protobuf itself otherwise.
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        // `google.protobuf.Value` (`CloudEvent.data`, `EventType.schema`) as a received
        // message's bytes or a built tree (src/proto/value.rs says why); the longest matching
        // path wins, so the other well-known types stay pbjson-types'.
        .extern_path(".google.protobuf.Value", "crate::proto::WireValue")
        .compile_fds(fds.clone())?;
    let grpc = out.join("grpc");
    std::fs::create_dir_all(&grpc)?;
    tonic_prost_build::configure()
        .out_dir(&grpc)
        // prost's codec, but a message that does not decode is INVALID_ARGUMENT, not INTERNAL.
        .codec_path("crate::transport::grpc::codec::StrictCodec")
        .compile_well_known_types(true)
        .extern_path(".google.protobuf", "::pbjson_types")
        .extern_path(".google.protobuf.Value", "crate::proto::WireValue")
        // The messages are the first pass's: only the services are generated here.
        .extern_path(".eventgateway.v1", "crate::proto")
        .extern_path(".google.api", "crate::proto::google_api")
        .compile_fds(fds)?;
    pbjson_build::Builder::new()
        .register_descriptors(&bytes)?
        // Replies show every field, zeros included (`"partition": 0`), as grpc-gateway's
        // EmitUnpopulated does: a client should not have to know proto3's default omission.
        .emit_fields()
        .extern_path(".google.protobuf.Value", "crate::proto::WireValue")
        .build(&[".eventgateway"])?;
    println!("cargo:rerun-if-changed=proto");
    Ok(())
}
