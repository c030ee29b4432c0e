"""Generated gRPC/protobuf code for oip_service.proto.

DO NOT EDIT: regenerate with ``python -m protos.generate``; a test fails when this
package is stale.
"""
