"""Trace loaders: each format on a small fixture, the shared Azure trace, and every error."""

from __future__ import annotations

import json
from itertools import pairwise
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from llmos.sim.errors import SimError
from llmos.sim.records import Request
from llmos.sim.traces import DEFAULT_TRACE, FORMATS, detect_format, load_trace, load_trace_info

DATA = Path(__file__).parent / "data"


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def shape(requests: list[Request]) -> list[tuple[float, int, int]]:
    return [(round(r.arrival_s, 7), r.prompt_len, r.output_len) for r in requests]


# ---------------------------------------------------------------------------------------------
# Formats
# ---------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name, fmt", [
    ("llmos_small.csv", "llmos"),
    ("azure_conv_2023_small.csv", "azure"),
    ("azure_code_2024_small.csv", "azure"),
    ("burstgpt_small.csv", "burstgpt"),
    ("mooncake_small.jsonl", "mooncake"),
])
def test_detect_format(name, fmt):
    assert detect_format(DATA / name) == fmt
    requests = load_trace(DATA / name)
    assert [r.request_id for r in requests] == list(range(len(requests)))
    assert requests[0].arrival_s == 0.0
    assert all(a.arrival_s <= b.arrival_s for a, b in pairwise(requests))
    assert all(r.prompt_len >= 1 and r.output_len >= 1 for r in requests)


def test_llmos_csv():
    info = load_trace_info(DATA / "llmos_small.csv")
    assert info.format == "llmos" and info.num_rows == 6
    assert shape(info.requests) == [
        (0.0, 374, 44), (4.314579, 396, 109), (4.541877, 879, 55), (4.710427, 91, 16),
        (6.311529, 381, 84), (7.250113, 1642, 1),
    ]
    assert info.clamped == {"zero_output": 1}  # the last row generated nothing
    assert all(r.tenant == "default" and r.nice == 0 and r.slo_s is None for r in info.requests)


def test_azure_2023_seven_fractional_digits():
    requests = load_trace(DATA / "azure_conv_2023_small.csv")
    # The first four rows are the llmos fixture's, in absolute time.
    assert shape(requests)[:4] == shape(load_trace(DATA / "llmos_small.csv"))[:4]
    # 18:15:59.9999999 -> 18:16:00.0000001 is 200 ns, across a whole-second boundary.
    assert requests[5].arrival_s - requests[4].arrival_s == pytest.approx(2e-7, abs=1e-9)
    assert requests[4].arrival_s == pytest.approx(13.3194099, abs=1e-9)


def test_azure_2024_with_timezone():
    info = load_trace_info(DATA / "azure_code_2024_small.csv", fmt="azure")
    assert shape(info.requests) == [
        (0.0, 2162, 5), (0.025082, 4519, 11), (0.142944, 1379, 2), (0.994285, 6873, 19),
        (1.240074, 3105, 1),
    ]
    assert info.clamped == {"zero_output": 1}


def test_azure_timezones_are_applied(tmp_path):
    path = write(tmp_path, "tz.csv", "TIMESTAMP,ContextTokens,GeneratedTokens\n"
                 "2024-05-10 02:00:00.5+02:00,10,1\n"
                 "2024-05-10T00:00:01Z,10,1\n"
                 "2024-05-09 23:00:00-01:30,10,1\n")
    assert [r.arrival_s for r in load_trace(path)] == [0.0, 0.5, 1799.5]  # 00:00:00.5Z, 00:00:01Z, 00:30:00Z


def test_burstgpt_skips_failures_and_filters_models():
    info = load_trace_info(DATA / "burstgpt_small.csv")
    assert shape(info.requests) == [(0.0, 472, 18), (113.0, 417, 276), (120.0, 2031, 312), (176.0, 655, 147)]
    assert info.num_rows == 6
    assert info.skipped == {"failed": 2}
    assert info.models == {"ChatGPT": 4, "GPT-4": 2}
    assert info.log_types == {"Conversation log": 3, "API log": 1}

    gpt4 = load_trace_info(DATA / "burstgpt_small.csv", model="GPT-4")
    assert shape(gpt4.requests) == [(0.0, 417, 276)]
    assert gpt4.skipped == {"other_model": 4, "failed": 1}


def test_burstgpt_unknown_model_names_the_models():
    with pytest.raises(SimError) as info:
        load_trace(DATA / "burstgpt_small.csv", model="Claude")
    assert info.value.errno == "EINVAL"
    assert "'Claude'" in info.value.message and "ChatGPT, GPT-4" in info.value.message


def test_model_filter_is_for_burstgpt_only():
    with pytest.raises(SimError, match="BurstGPT traces only"):
        load_trace(DATA / "llmos_small.csv", model="GPT-4")


def test_mooncake_keeps_hash_ids_and_converts_ms():
    requests = load_trace(DATA / "mooncake_small.jsonl")
    assert shape(requests) == [
        (0.0, 1100, 12), (1.52, 1300, 96), (2.981, 600, 5), (3.004, 2048, 230), (5.112, 300, 41),
    ]
    assert [r.hash_ids for r in requests] == [(0, 1, 2), (0, 1, 3), (4, 5), (0, 1, 3, 6), (7,)]


def test_mooncake_hash_ids_are_optional_and_blank_lines_skipped(tmp_path):
    path = write(tmp_path, "m.jsonl", '{"timestamp": 10, "input_length": 5, "output_length": 0}\n\n')
    (request,) = load_trace(path)
    assert (request.hash_ids, request.output_len) == ((), 1)


# ---------------------------------------------------------------------------------------------
# Shared rules
# ---------------------------------------------------------------------------------------------

def test_unsorted_rows_are_sorted_stably_and_rebased(tmp_path):
    path = write(tmp_path, "u.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n"
                 "12.5,1,1\n10.0,2,2\n12.5,3,3\n11.0,4,4\n10.0,5,5\n")
    requests = load_trace(path)
    assert shape(requests) == [(0.0, 2, 2), (0.0, 5, 5), (1.0, 4, 4), (2.5, 1, 1), (2.5, 3, 3)]
    assert [r.request_id for r in requests] == [0, 1, 2, 3, 4]


def test_empty_prompts_are_skipped(tmp_path):
    path = write(tmp_path, "z.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n"
                 "0.0,0,10\n1.0,5,10\n2.0,0,0\n")
    info = load_trace_info(path)
    assert shape(info.requests) == [(0.0, 5, 10)]  # rebased to the first kept request
    assert info.skipped == {"empty_prompt": 2} and info.num_rows == 3


def test_columns_in_any_order_with_extras_and_integral_floats(tmp_path):
    path = write(tmp_path, "o.csv", "num_decode_tokens,extra,arrived_at,num_prefill_tokens\n"
                 "7,x,0.5,12.0\n8,y,0.25,13\n")
    assert shape(load_trace(path)) == [(0.0, 13, 8), (0.25, 12, 7)]


def test_crlf_and_byte_order_mark(tmp_path):
    path = tmp_path / "bom.csv"
    path.write_bytes(b"\xef\xbb\xbfarrived_at,num_prefill_tokens,num_decode_tokens\r\n0,3,4\r\n1,5,6\r\n")
    assert shape(load_trace(path)) == [(0.0, 3, 4), (1.0, 5, 6)]


rows = st.lists(st.tuples(st.floats(0, 1e6, allow_nan=False), st.integers(1, 10**6), st.integers(1, 10**5),
                          st.lists(st.integers(0, 2**40), max_size=4)), min_size=1, max_size=40)


@settings(max_examples=60, deadline=None)
@given(rows=rows)
def test_any_rows_round_trip_in_csv_and_jsonl(tmp_path_factory, rows):
    folder = tmp_path_factory.mktemp("rt")
    csv_path = folder / "t.csv"
    csv_path.write_text("arrived_at,num_prefill_tokens,num_decode_tokens\n"
                        + "".join(f"{a!r},{p},{o}\n" for a, p, o, _ in rows))
    jsonl_path = folder / "t.jsonl"
    jsonl_path.write_text("".join(json.dumps({"timestamp": a * 1000, "input_length": p, "output_length": o,
                                              "hash_ids": h}) + "\n" for a, p, o, h in rows))
    expected = sorted(rows, key=lambda r: r[0])  # stable, like the loader
    start = expected[0][0]
    from_csv = load_trace(csv_path)
    assert [(r.arrival_s, r.prompt_len, r.output_len) for r in from_csv] == [
        (a - start, p, o) for a, p, o, _ in expected]
    # Milliseconds and back can merge two nearly equal times, so sort on the loader's own key.
    expected_ms = sorted(rows, key=lambda r: r[0] * 1000 / 1000.0)
    from_jsonl = load_trace(jsonl_path)
    assert [(r.prompt_len, r.output_len, r.hash_ids) for r in from_jsonl] == [
        (p, o, tuple(h)) for _, p, o, h in expected_ms]
    assert [r.arrival_s for r in from_jsonl] == pytest.approx([a - start for a, *_ in expected_ms], abs=1e-6)


# ---------------------------------------------------------------------------------------------
# The shared Azure trace
# ---------------------------------------------------------------------------------------------

@pytest.mark.skipif(not DEFAULT_TRACE.is_file(), reason="shared/traces/ is not beside the repository")
def test_shared_azure_trace_has_the_readme_shape():
    import numpy as np

    info = load_trace_info(DEFAULT_TRACE)
    requests = info.requests
    assert info.format == "llmos" and len(requests) == 19_366 and info.num_rows == 19_366
    assert not info.skipped and not info.clamped
    prompts = np.array([r.prompt_len for r in requests])
    outputs = np.array([r.output_len for r in requests])
    assert round(prompts.mean()) == 1155 and np.percentile(prompts, 50) == 1020
    assert np.percentile(prompts, 99) == 4142
    assert round(outputs.mean()) == 211 and np.percentile(outputs, 50) == 129
    assert np.percentile(outputs, 99) == 601
    assert len(requests) / requests[-1].arrival_s == pytest.approx(5.53, abs=0.005)


# ---------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------

def expect(errno: str, *fragments: str):
    """A context manager asserting a SimError with ``errno`` whose message has every fragment."""
    class Expect:
        def __enter__(self):
            self.raises = pytest.raises(SimError)
            self.info = self.raises.__enter__()
            return self.info

        def __exit__(self, *exc):
            handled = self.raises.__exit__(*exc)
            assert self.info.value.errno == errno, self.info.value
            for fragment in fragments:
                assert fragment in self.info.value.message, self.info.value.message
            return handled
    return Expect()


def test_missing_file_is_enoent(tmp_path):
    with expect("ENOENT", str(tmp_path / "nope.csv")):
        load_trace(tmp_path / "nope.csv")
    with expect("ENOENT"):
        detect_format(tmp_path)  # a directory is no trace file


def test_bad_header_is_einval_listing_formats(tmp_path):
    path = write(tmp_path, "h.csv", "time,prompt,output\n0,1,1\n")
    with expect("EINVAL", f"{path}:1", "'time,prompt,output'", "BurstGPT CSV", "Mooncake JSONL"):
        load_trace(path)


def test_empty_and_header_only_files(tmp_path):
    with expect("EINVAL", "empty"):
        load_trace(write(tmp_path, "e.csv", "\n\n"))
    with expect("EINVAL", "no usable requests", "0 rows"):
        load_trace(write(tmp_path, "h.csv", "arrived_at,num_prefill_tokens,num_decode_tokens\n"))


def test_unknown_and_mismatched_format(tmp_path):
    with expect("EINVAL", "unknown trace format 'parquet'"):
        load_trace(DATA / "llmos_small.csv", fmt="parquet")
    with expect("EINVAL", "a llmos trace's, not mooncake's"):
        load_trace(DATA / "llmos_small.csv", fmt="mooncake")
    assert set(FORMATS) == {"llmos", "azure", "burstgpt", "mooncake"}


@pytest.mark.parametrize("row, fragment", [
    ("1.0,abc,3", "num_prefill_tokens 'abc' is not a token count"),
    ("1.0,5,2.5", "num_decode_tokens '2.5' is not a token count"),
    ("1.0,-5,3", "num_prefill_tokens -5 is negative"),
    ("1.0,5,-3", "num_decode_tokens -3 is negative"),
    ("x,5,3", "arrived_at 'x' is not a number"),
    ("nan,5,3", "arrived_at 'nan' is not finite"),
    ("1.0,5", "expected 3 fields like the header, got 2"),
    ("1.0,5,3,9", "expected 3 fields like the header, got 4"),
])
def test_bad_llmos_row_names_its_line(tmp_path, row, fragment):
    path = write(tmp_path, "b.csv", f"arrived_at,num_prefill_tokens,num_decode_tokens\n0,1,1\n\n{row}\n")
    with expect("EINVAL", f"{path}:4:", fragment):
        load_trace(path)


@pytest.mark.parametrize("row, fragment", [
    ("2023-11-16 18:15:46,5,x", "GeneratedTokens 'x'"),
    ("2023-11-16,5,3", "TIMESTAMP '2023-11-16' is not"),
    ("2023-13-16 18:15:46.1,5,3", "month must be in 1..12"),
    ("1700000000,5,3", "TIMESTAMP '1700000000'"),
])
def test_bad_azure_row_names_its_line(tmp_path, row, fragment):
    path = write(tmp_path, "a.csv", f"TIMESTAMP,ContextTokens,GeneratedTokens\n2023-11-16 18:15:45.5,1,1\n{row}\n")
    with expect("EINVAL", f"{path}:3:", fragment):
        load_trace(path)


def test_bad_burstgpt_row_names_its_line(tmp_path):
    header = "Timestamp,Model,Request tokens,Response tokens,Total tokens,Log Type\n"
    path = write(tmp_path, "g.csv", header + "5,ChatGPT,10,-1,9,API log\n")
    with expect("EINVAL", f"{path}:2:", "Response tokens -1 is negative"):
        load_trace(path)
    missing = write(tmp_path, "m.csv", "Timestamp,Model,Request tokens\n5,ChatGPT,10\n")
    with expect("EINVAL", f"{missing}:1:", "unrecognised trace header"):
        load_trace(missing)
    renamed = write(tmp_path, "n.csv", header.replace("Response", "Reply"))
    with expect("EINVAL", f"{renamed}:1:", "a burstgpt trace needs column(s) Response tokens"):
        load_trace(renamed, fmt="burstgpt")


@pytest.mark.parametrize("line, fragment", [
    ('{"timestamp": 5, "input_length": 3', "not a JSON object"),
    ('[1, 2, 3]', "expected a JSON object, got list"),
    ('{"timestamp": 5, "input_length": 3}', "missing key(s) output_length"),
    ('{"timestamp": "5", "input_length": 3, "output_length": 1}', "timestamp '5' is not a finite number"),
    ('{"timestamp": 5, "input_length": 3.5, "output_length": 1}', "input_length 3.5 is not an integer"),
    ('{"timestamp": 5, "input_length": 3, "output_length": -1}', "output_length -1 is negative"),
    ('{"timestamp": 5, "input_length": 3, "output_length": true}', "output_length True"),
    ('{"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": [1, "a"]}', "hash_ids must be"),
    ('{"timestamp": 5, "input_length": 3, "output_length": 1, "hash_ids": 7}', "hash_ids must be"),
])
def test_bad_mooncake_line_names_its_line(tmp_path, line, fragment):
    good = json.dumps({"timestamp": 0, "input_length": 4, "output_length": 2, "hash_ids": [1]})
    path = write(tmp_path, "m.jsonl", f"{good}\n{good}\n{line}\n")
    with expect("EINVAL", f"{path}:3:", fragment):
        load_trace(path)
