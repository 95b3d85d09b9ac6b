"""Interop test: a Python gRPC client, generated from the .proto by
buf.gen.clients.yaml, against the real imagerecordsd binary started in
--simulate mode on a free loopback port.

    IMAGERECORDSD=/path/to/imagerecordsd /usr/bin/python3 -m unittest -v test_imagerecords

It needs Debian's python3-grpcio and python3-protobuf, and the generated code
in gen/ (`go tool -modfile=tools/go.mod buf generate --template
buf.gen.clients.yaml` from the repository root).
"""

import json
import os
import pathlib
import signal
import subprocess
import sys
import threading
import unittest

import grpc

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent / "gen"))

from ecd.imagerecords.v1 import image_records_pb2 as pb  # noqa: E402
from ecd.imagerecords.v1 import image_records_pb2_grpc as pb_grpc  # noqa: E402
from google.rpc import error_details_pb2, status_pb2  # noqa: E402

STARTUP_TIMEOUT_S = 30
CALL_TIMEOUT_S = 30
# The gateway drains for up to --shutdown-grace (15s by default) on SIGTERM.
EXIT_TIMEOUT_S = 30

REGION = "cn-hangzhou"
# Records per simulated desktop, in the order of the log's desktop_ids.
SIMULATED_RECORDS = [1234, 250, 101, 100, 42, 7, 1, 0]
# The upstream Status numbers and the typed status each maps to.
STATUS_OF_UPSTREAM = {
    0: pb.IMAGE_MODIFICATION_STATUS_IN_PROGRESS,
    1: pb.IMAGE_MODIFICATION_STATUS_SUCCEEDED,
    2: pb.IMAGE_MODIFICATION_STATUS_FAILED,
}


class Gateway:
    """Gateway runs `$IMAGERECORDSD --simulate --listen 127.0.0.1:0` and
    reads its JSON log on stderr for the simulated desktops and the address
    it serves on."""

    def __init__(self, binary):
        # IMAGERECORDS_<FLAG> variables set the gateway's flags; keep the
        # caller's (e.g. IMAGERECORDS_LOG_LEVEL=error) out of this run.
        env = {k: v for k, v in os.environ.items() if not k.startswith("IMAGERECORDS_")}
        self.process = subprocess.Popen(
            [binary, "--simulate", "--listen", "127.0.0.1:0"],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,  # a human banner
            stderr=subprocess.PIPE,
            env=env,
        )
        self.log_lines = []
        self.simulator = None
        self.addr = None
        self._ready = threading.Event()
        self._reader = threading.Thread(target=self._read_log, daemon=True)
        self._reader.start()
        if not self._ready.wait(STARTUP_TIMEOUT_S) or self.addr is None or self.simulator is None:
            self.process.kill()
            self.process.wait()
            raise RuntimeError(
                f'no "simulator started" and "serving" log lines within {STARTUP_TIMEOUT_S}s '
                f"(exit code {self.process.returncode})\n{self.log()}"
            )

    def _read_log(self):
        for raw in self.process.stderr:
            line = raw.decode("utf-8", "replace").rstrip("\n")
            self.log_lines.append(line)
            del self.log_lines[:-500]
            try:
                entry = json.loads(line)
            except ValueError:
                continue  # not a log object: kept for diagnostics only
            if entry.get("msg") == "simulator started":
                self.simulator = entry
            elif entry.get("msg") == "serving":
                self.addr = entry["addr"]
            if self.simulator and self.addr:
                self._ready.set()
        self._ready.set()  # stderr closed: the process is gone

    def log(self):
        return "--- imagerecordsd stderr ---\n" + "\n".join(self.log_lines)

    def stop(self):
        """stop sends SIGTERM and returns the exit code."""
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
        try:
            code = self.process.wait(EXIT_TIMEOUT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()
            raise AssertionError(f"no exit within {EXIT_TIMEOUT_S}s of SIGTERM\n{self.log()}")
        self._reader.join(EXIT_TIMEOUT_S)
        return code


def record_key(record):
    """record_key identifies a record: the simulator's records differ in
    (image_id, new_image_id, update_time)."""
    return (record.image_id, record.new_image_id, record.update_time.ToNanoseconds())


def status_details(err):
    """status_details decodes the google.rpc.Status that the gateway sends in
    the grpc-status-details-bin trailer of a failed call."""
    for key, value in err.trailing_metadata() or ():
        if key == "grpc-status-details-bin":
            status = status_pb2.Status.FromString(value)
            if status.code != err.code().value[0]:
                raise AssertionError(f"Status.code {status.code} differs from the call's {err.code()}")
            return status
    raise AssertionError(f"no grpc-status-details-bin trailer in {err.trailing_metadata()}")


def unpack_details(status, message_class):
    """unpack_details returns the details of status that are message_class."""
    found = []
    for any_detail in status.details:
        if any_detail.Is(message_class.DESCRIPTOR):
            detail = message_class()
            any_detail.Unpack(detail)
            found.append(detail)
    return found


class ImageRecordsOverGrpc(unittest.TestCase):
    """The generated Python stubs over gRPC (HTTP/2 cleartext)."""

    @classmethod
    def setUpClass(cls):
        binary = os.environ.get("IMAGERECORDSD")
        if not binary:
            raise RuntimeError(
                "IMAGERECORDSD is not set: point it at an imagerecordsd binary, e.g. "
                "(cd ../.. && go build -o imagerecordsd ./cmd/imagerecordsd) && "
                "IMAGERECORDSD=../../imagerecordsd python3 -m unittest -v test_imagerecords"
            )
        cls.gateway = Gateway(os.path.abspath(binary))
        cls.addClassCleanup(cls.stop_gateway)
        cls.desktops = cls.gateway.simulator["desktop_ids"]
        cls.channel = grpc.insecure_channel(cls.gateway.addr)
        cls.addClassCleanup(cls.channel.close)
        cls.client = pb_grpc.ImageRecordsServiceStub(cls.channel)

    @classmethod
    def stop_gateway(cls):
        code = cls.gateway.stop()
        if code != 0:
            raise AssertionError(f"imagerecordsd exited with {code} on SIGTERM\n{cls.gateway.log()}")

    def stream(self, **fields):
        call = self.client.StreamImageModifiedRecords(
            pb.StreamImageModifiedRecordsRequest(region_id=REGION, **fields), timeout=CALL_TIMEOUT_S
        )
        return list(call)

    def test_simulator_desktops(self):
        self.assertEqual(self.gateway.simulator["region"], REGION)
        self.assertEqual(len(self.desktops), len(SIMULATED_RECORDS), self.desktops)

    def test_list_follows_next_page_token(self):
        request = pb.ListImageModifiedRecordsRequest(region_id=REGION, desktop_id=self.desktops[0], page_size=5)
        first = self.client.ListImageModifiedRecords(request, timeout=CALL_TIMEOUT_S)
        self.assertEqual(len(first.records), 5)
        self.assertEqual(first.total_count, 1234)
        self.assertNotEqual(first.next_page_token, "")
        self.assertNotEqual(first.request_id, "")
        for record in first.records:
            self.assertTrue(record.HasField("update_time"), record)
            self.assertNotEqual(record.image_id, "")
            self.assertNotEqual(record.new_image_id, "")
            # upstream_status has presence: set even when it is 0.
            self.assertTrue(record.HasField("upstream_status"), record)
            self.assertEqual(record.status, STATUS_OF_UPSTREAM.get(record.upstream_status), record)

        request.page_token = first.next_page_token
        second = self.client.ListImageModifiedRecords(request, timeout=CALL_TIMEOUT_S)
        self.assertEqual(len(second.records), 5)
        self.assertEqual(second.total_count, 1234)
        self.assertNotEqual(second.next_page_token, first.next_page_token)
        self.assertFalse(
            {record_key(r) for r in first.records} & {record_key(r) for r in second.records},
            "a record of the first page came again on the second",
        )

    def test_stream_delivers_total_count(self):
        for i, desktop in enumerate(self.desktops):
            with self.subTest(desktop=desktop):
                messages = self.stream(desktop_id=desktop)
                records = [r for m in messages for r in m.records]
                self.assertEqual(len(records), SIMULATED_RECORDS[i])
                self.assertEqual(len({record_key(r) for r in records}), len(records), "records repeated")
                for m in messages:
                    self.assertEqual(m.total_count, len(records))
                    self.assertNotEqual(m.request_id, "")
                self.assertEqual(messages[-1].resume_token, "", "resume_token of the last message")
                times = [r.update_time.ToNanoseconds() for r in records]
                self.assertEqual(times, sorted(times), "update_time goes back")

    def test_resume_from_mid_stream(self):
        whole = [r for m in self.stream(desktop_id=self.desktops[0]) for r in m.records]
        self.assertEqual(len(whole), 1234)

        with self.subTest("a caller that stops reading after 3 messages"):
            call = self.client.StreamImageModifiedRecords(
                pb.StreamImageModifiedRecordsRequest(region_id=REGION, desktop_id=self.desktops[0]),
                timeout=CALL_TIMEOUT_S,
            )
            head = [next(call) for _ in range(3)]
            call.cancel()
            token = head[-1].resume_token
            self.assertNotEqual(token, "")
            tail = self.stream(desktop_id=self.desktops[0], page_token=token)
            self.assertEqual([r for m in head + tail for r in m.records], whole)

        with self.subTest("max_records that cuts a page in half"):
            head = self.stream(desktop_id=self.desktops[0], max_records=150)
            self.assertEqual(sum(len(m.records) for m in head), 150)
            token = head[-1].resume_token
            self.assertNotEqual(token, "")
            tail = self.stream(desktop_id=self.desktops[0], page_token=token)
            self.assertEqual([r for m in head + tail for r in m.records], whole)

    def test_tiny_deadline_is_deadline_exceeded(self):
        # 1 ms cannot cover the 13 signed upstream calls of a full stream.
        call = self.client.StreamImageModifiedRecords(
            pb.StreamImageModifiedRecordsRequest(region_id=REGION, desktop_id=self.desktops[0]), timeout=0.001
        )
        with self.assertRaises(grpc.RpcError) as caught:
            list(call)
        self.assertEqual(caught.exception.code(), grpc.StatusCode.DEADLINE_EXCEEDED, caught.exception.details())
        # The gateway goes on serving.
        page = self.client.ListImageModifiedRecords(
            pb.ListImageModifiedRecordsRequest(region_id=REGION, desktop_id=self.desktops[0]), timeout=CALL_TIMEOUT_S
        )
        self.assertEqual(page.total_count, 1234)

    def test_invalid_argument_names_every_bad_field(self):
        request = pb.ListImageModifiedRecordsRequest(region_id=REGION, desktop_id="not-a-desktop", page_size=101)
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.ListImageModifiedRecords(request, timeout=CALL_TIMEOUT_S)
        err = caught.exception
        self.assertEqual(err.code(), grpc.StatusCode.INVALID_ARGUMENT, err.details())
        bad_requests = unpack_details(status_details(err), error_details_pb2.BadRequest)
        self.assertEqual(len(bad_requests), 1, "google.rpc.BadRequest details")
        fields = sorted(v.field for v in bad_requests[0].field_violations)
        self.assertEqual(fields, ["desktop_id", "page_size"])
        for violation in bad_requests[0].field_violations:
            self.assertNotEqual(violation.description, "", violation)

    def test_upstream_not_found_carries_error_info(self):
        request = pb.ListImageModifiedRecordsRequest(region_id=REGION, desktop_id="ecd-nosuchdesktop1")
        with self.assertRaises(grpc.RpcError) as caught:
            self.client.ListImageModifiedRecords(request, timeout=CALL_TIMEOUT_S)
        err = caught.exception
        self.assertEqual(err.code(), grpc.StatusCode.NOT_FOUND, err.details())
        infos = unpack_details(status_details(err), error_details_pb2.ErrorInfo)
        self.assertEqual(len(infos), 1, "google.rpc.ErrorInfo details")
        info = infos[0]
        self.assertEqual(info.domain, "ecd.aliyuncs.com")
        self.assertEqual(info.reason, "InvalidDesktopId.NotFound")
        self.assertEqual(info.metadata["http_status"], "400")
        self.assertNotEqual(info.metadata["upstream_request_id"], "")
        self.assertIn("InvalidDesktopId.NotFound", info.metadata["recommend"])


if __name__ == "__main__":
    unittest.main()
