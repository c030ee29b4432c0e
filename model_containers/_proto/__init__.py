"""Generated gRPC/protobuf code for container.proto, health.proto.

DO NOT EDIT: regenerate with ``python -m protos.generate``; a test fails when this
package is stale.
"""
