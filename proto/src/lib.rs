//! Shoal gRPC protocol; the .proto files and generated code arrive with the control-plane issue.
