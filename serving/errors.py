"""The error every serving layer raises for a request it refuses."""

from __future__ import annotations

import grpc


class ServingError(Exception):
    """A request the server rejects; carries the gRPC status to return."""

    def __init__(self, code: grpc.StatusCode, message: str):
        super().__init__(message)
        self.code = code
        self.message = message
