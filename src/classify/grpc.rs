//! gRPC classification. Filled in by the gRPC classification work.
