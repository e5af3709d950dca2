"""Server reflection that carries the proto comments.

grpcio-reflection builds its answers with FileDescriptor.CopyToProto, which
drops source_code_info, so `grpcurl describe` would show no documentation.
This servicer answers like the stock one and then swaps in, for flowtrack's
own files, the FileDescriptorProtos that scripts/gen_protos.py wrote with
--include_source_info (src/flowtrack/v1/flowtrack_v1.binpb).
"""

from __future__ import annotations

from importlib import resources
from typing import Any

from google.protobuf import descriptor_pb2
from grpc_reflection.v1alpha import reflection, reflection_pb2_grpc

DESCRIPTORS = "flowtrack_v1.binpb"


def documented_files() -> dict[str, bytes]:
    """File name -> serialized FileDescriptorProto with its comments.

    protoc also records each field's json_name, which the stock answers lack;
    grpcurl would then print lowerCamelCase instead of the field names it
    prints for every other file. They are cleared so that grpcurl's output
    keeps the proto's own field names, as before."""
    data = (resources.files("flowtrack.v1") / DESCRIPTORS).read_bytes()
    files = {}
    for file in descriptor_pb2.FileDescriptorSet.FromString(data).file:
        pending = list(file.message_type)
        while pending:
            message = pending.pop()
            for field in message.field:
                field.ClearField("json_name")
            pending.extend(message.nested_type)
        files[file.name] = file.SerializeToString()
    return files


class DocumentedReflectionServicer(reflection.aio.ReflectionServicer):  # type: ignore[misc]
    def __init__(self, service_names: tuple[str, ...]) -> None:
        super().__init__(service_names)
        self._documented = documented_files()

    def _with_comments(self, response: Any) -> Any:
        files = response.file_descriptor_response.file_descriptor_proto
        for index, serialized in enumerate(files):
            name = descriptor_pb2.FileDescriptorProto.FromString(serialized).name
            if name in self._documented:
                files[index] = self._documented[name]
        return response

    def _file_by_filename(self, request: Any, filename: str) -> Any:
        return self._with_comments(super()._file_by_filename(request, filename))

    def _file_containing_symbol(self, request: Any, fully_qualified_name: str) -> Any:
        response = super()._file_containing_symbol(request, fully_qualified_name)
        if response.HasField("error_response"):
            # The upb descriptor pool cannot find methods by name, so
            # `grpcurl describe Service.Method` would fail: answer with the
            # file of the method's service.
            service, _, method = fully_qualified_name.rpartition(".")
            try:
                found = method in self._pool.FindServiceByName(service).methods_by_name
            except KeyError:
                found = False
            if found:
                response = super()._file_containing_symbol(request, service)
        return self._with_comments(response)


def add_reflection(service_names: tuple[str, ...], server: Any) -> None:
    """Register documented server reflection for `service_names` (plus itself)."""
    names = (*service_names, reflection.SERVICE_NAME)
    reflection_pb2_grpc.add_ServerReflectionServicer_to_server(DocumentedReflectionServicer(names), server)
