"""The device registry CSV: per-row validation, line numbers, and the round trip."""

from __future__ import annotations

import csv
import io
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from devices.errors import RegistryError
from devices.profile import DeviceProfile, ProfileSet
from devices.registry import (
    DeviceRecord,
    RegistryImport,
    RowProblem,
    parse_registry_csv,
    read_registry_csv,
    write_registry_csv,
)

WATER_GAUGE = DeviceProfile.model_validate(
    {
        "name": "water_gauge",
        "domain": "flood",
        "title": "River and channel water-level gauge",
        "reporting_interval": "5m",
        "metrics": {"level_m": {"unit": "m", "range": [-5, 30]}},
        "attributes": {
            "warning_level_m": {
                "type": "float",
                "unit": "m",
                "required": True,
                "description": "warning water level",
            },
            "datum": {"type": "str", "default": "wusong"},
        },
    }
)
NOISE_MONITOR = DeviceProfile.model_validate(
    {
        "name": "noise_monitor",
        "domain": "environment",
        "title": "Environmental noise monitor",
        "reporting_interval": "1m",
        "metrics": {"leq_db": {"unit": "dB(A)", "range": [20, 140]}},
        "attributes": {
            "zone": {
                "type": "enum",
                "values": ["0", "1", "2", "3", "4a", "4b"],
                "required": True,
                "description": "acoustic environment zone (GB 3096)",
            }
        },
    }
)
PROFILES = ProfileSet([WATER_GAUGE, NOISE_MONITOR])

HEADER = "id,profile,district,name,lat,lon,warning_level_m,zone\n"


def read(tmp_path: Path, text: str, name: str = "devices.csv") -> RegistryImport:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8", newline="")
    return read_registry_csv(path, PROFILES)


def problems_by_line(result: RegistryImport) -> dict[int, list[str]]:
    out: dict[int, list[str]] = {}
    for problem in result.problems:
        out.setdefault(problem.line, []).append(problem.message)
    return out


def test_good_file_gives_converted_records(tmp_path: Path) -> None:
    result = read(
        tmp_path,
        HEADER
        + "rg-0001,water_gauge,pudong,Huangpu at Wusong,31.38,121.50,4.8,\n"
        + "nz-0001,noise_monitor,jingan,Nanjing Rd W,31.23,121.45,,4a\n"
        + "rg-0002,water_gauge,minhang,,,,3.5,\n",
    )

    assert result.problems == []
    assert result.rows == 3
    assert result.rejected == 0
    assert result.records == [
        DeviceRecord(
            device_id="rg-0001",
            profile="water_gauge",
            district="pudong",
            name="Huangpu at Wusong",
            lat=31.38,
            lon=121.5,
            attributes={"warning_level_m": 4.8, "datum": "wusong"},
        ),
        DeviceRecord("nz-0001", "noise_monitor", "jingan", "Nanjing Rd W", 31.23, 121.45,
                     {"zone": "4a"}),
        DeviceRecord("rg-0002", "water_gauge", "minhang", "", None, None,
                     {"warning_level_m": 3.5, "datum": "wusong"}),
    ]  # fmt: skip
    assert not any(r.provisional for r in result.records)


def test_unknown_columns_are_kept_as_text_labels(tmp_path: Path) -> None:
    result = read(
        tmp_path,
        "id,profile,district,warning_level_m,owner\nrg-1,water_gauge,pudong,4.8,Water Bureau\n",
    )

    assert result.problems == []
    assert result.records[0].attributes["owner"] == "Water Bureau"


def test_bad_rows_are_reported_by_physical_line_and_good_rows_kept(tmp_path: Path) -> None:
    text = (
        HEADER  # line 1
        + 'rg-0001,water_gauge,pudong,"Huangpu at\nWusong",31.38,121.50,4.8,\n'  # lines 2-3
        + "rg-0002,water_gauge,pudong,Suzhou Creek,123.4,121.4,4.2,\n"  # line 4
        + "\n"  # line 5, blank
        + 'nz-0001,noise_monitor,jingan,"Gate 1\n\nGate 2",31.2,121.4,,3\n'  # lines 6-8
        + "nz-0002,noise_monitor,jingan,,,,,9\n"  # line 9
        + "rg-0003,water_gauge,minhang,,,,3.1,\n"  # line 10
    )

    result = read(tmp_path, text)

    assert [r.device_id for r in result.records] == ["rg-0001", "nz-0001", "rg-0003"]
    assert result.records[0].name == "Huangpu at\nWusong"
    by_line = problems_by_line(result)
    assert by_line.keys() == {4, 9}
    assert by_line[4] == ["lat 123.4 is outside -90..90"]
    assert by_line[9][0] == "attribute zone: '9' is not one of 0, 1, 2, 3, 4a, 4b"
    assert result.rows == 5
    assert result.rejected == 2


def test_problem_names_file_line_and_device(tmp_path: Path) -> None:
    result = read(tmp_path, HEADER + "rg-0012,water_gauge,pudong,,123.4,121.4,4.2,\n")

    (problem,) = result.problems
    assert problem == RowProblem(
        2, "rg-0012", "lat 123.4 is outside -90..90", tmp_path / "devices.csv"
    )
    assert str(problem) == f"{tmp_path / 'devices.csv'}:2 (device rg-0012): " + problem.message
    assert str(RowProblem(7, None, "id is empty")) == "line 7: id is empty"


def test_every_problem_of_a_row_is_reported(tmp_path: Path) -> None:
    result = read(tmp_path, HEADER + "rg/1,water_gauge,pu dong,,95,200,,\n")

    messages = problems_by_line(result)[2]
    assert len(messages) == 5
    assert messages[0].startswith("id 'rg/1' must be 1 to 128 letters")
    assert messages[1].startswith("district 'pu dong' must be")
    assert messages[2] == "lat 95 is outside -90..90"
    assert messages[3] == "lon 200 is outside -180..180"
    assert messages[4].startswith("attribute warning_level_m is required by profile water_gauge")
    assert all(p.device_id == "rg/1" for p in result.problems)
    assert result.rejected == 1
    assert result.records == []


def test_unknown_profile_lists_the_known_ones(tmp_path: Path) -> None:
    result = read(
        tmp_path,
        HEADER + "rg-1,water_guage,pudong,,,,4.8,\nrg-2,,pudong,,,,4.8,\n",
    )

    assert problems_by_line(result) == {
        2: [
            "unknown profile 'water_guage'; did you mean water_gauge? "
            "known profiles: noise_monitor, water_gauge"
        ],
        3: ["profile is empty; known profiles: noise_monitor, water_gauge"],
    }


def test_missing_required_attribute(tmp_path: Path) -> None:
    result = read(
        tmp_path, HEADER + "rg-1,water_gauge,pudong,,,,,\nnz-1,noise_monitor,pudong,,,,,\n"
    )

    assert problems_by_line(result) == {
        2: ["attribute warning_level_m is required by profile water_gauge (warning water level)"],
        3: [
            "attribute zone is required by profile noise_monitor "
            "(acoustic environment zone (GB 3096))"
        ],
    }


def test_attribute_that_is_not_a_number(tmp_path: Path) -> None:
    result = read(tmp_path, HEADER + "rg-1,water_gauge,pudong,,,,high,\n")

    assert problems_by_line(result)[2][0] == (
        "attribute warning_level_m: could not convert string to float: 'high'"
    )
    assert result.records == []


@pytest.mark.parametrize(
    ("lat", "lon", "message"),
    [
        ("123.4", "121.4", "lat 123.4 is outside -90..90"),
        ("-90.5", "121.4", "lat -90.5 is outside -90..90"),
        ("31.2", "-181", "lon -181 is outside -180..180"),
        ("north", "121.4", "lat 'north' is not a number (decimal degrees, WGS 84)"),
        ("31.2", "nan", "lon 'nan' is not a finite number"),
        ("31.2", "", "lat is given but lon is empty; give both or neither"),
        ("", "121.4", "lon is given but lat is empty; give both or neither"),
    ],
)
def test_bad_coordinates(tmp_path: Path, lat: str, lon: str, message: str) -> None:
    result = read(tmp_path, HEADER + f"rg-1,water_gauge,pudong,,{lat},{lon},4.8,\n")

    assert problems_by_line(result) == {2: [message]}
    assert result.records == []


def test_coordinates_on_the_limits_are_accepted(tmp_path: Path) -> None:
    result = read(tmp_path, HEADER + "rg-1,water_gauge,pudong,, -90 ,180,4.8,\n")

    assert result.problems == []
    assert (result.records[0].lat, result.records[0].lon) == (-90.0, 180.0)


@pytest.mark.parametrize(
    "device_id", ["city/rg-1", "rg+1", "rg#1", "rg 1", "$SYS", "-rg1", "r" * 129]
)
def test_ids_that_cannot_be_a_topic_level_are_rejected(tmp_path: Path, device_id: str) -> None:
    result = read(tmp_path, HEADER + f"{device_id},water_gauge,pudong,,,,4.8,\n")

    (problem,) = result.problems
    assert problem.message.startswith("id ")
    assert "MQTT topic level" in problem.message
    assert problem.device_id == device_id


def test_empty_id_and_district(tmp_path: Path) -> None:
    result = read(tmp_path, HEADER + ",water_gauge,,,,,4.8,\n")

    assert problems_by_line(result) == {2: ["id is empty", "district is empty"]}
    assert result.problems[0].device_id is None


def test_duplicate_id_names_the_first_line(tmp_path: Path) -> None:
    result = read(
        tmp_path,
        HEADER
        + 'rg-1,water_gauge,pudong,"two\nlines",,,4.8,\n'  # lines 2-3
        + "rg-2,water_gauge,pudong,,,,4.8,\n"  # line 4
        + "rg-1,water_gauge,minhang,,,,5.0,\n"  # line 5
        + "rg-1,water_gauge,minhang,,,,5.0,\n",  # line 6
    )

    assert [(r.device_id, r.district) for r in result.records] == [
        ("rg-1", "pudong"),
        ("rg-2", "pudong"),
    ]
    assert problems_by_line(result) == {
        5: ["id rg-1 already appears on line 2"],
        6: ["id rg-1 already appears on line 2"],
    }


def test_duplicate_of_a_rejected_row_is_still_a_duplicate(tmp_path: Path) -> None:
    result = read(
        tmp_path,
        HEADER + "rg-1,water_gauge,pudong,,95,121,4.8,\nrg-1,water_gauge,pudong,,31,121,4.8,\n",
    )

    assert problems_by_line(result) == {
        2: ["lat 95 is outside -90..90"],
        3: ["id rg-1 already appears on line 2"],
    }


def test_wrong_number_of_cells(tmp_path: Path) -> None:
    result = read(
        tmp_path,
        HEADER
        + "rg-1,water_gauge,pudong,Bridge, north side,31.2,121.4,4.8,\n"
        + "rg-2,water_gauge,pudong\n"
        + "rg-3,water_gauge,pudong,,,,4.8,,,\n"
        + "rg-4,water_gauge,pudong,,,,4.8,\n",
    )

    assert problems_by_line(result) == {
        2: [
            "row has 9 cells, the header has 8; "
            "a cell holding a comma must be enclosed in double quotes"
        ],
        3: ["row has 3 cells, the header has 8; write every cell, empty ones too"],
        4: [
            "row has 10 cells, the header has 8; "
            "a cell holding a comma must be enclosed in double quotes"
        ],
    }
    assert [r.device_id for r in result.records] == ["rg-4"]


def test_cells_are_trimmed_and_blank_rows_skipped(tmp_path: Path) -> None:
    result = read(
        tmp_path,
        "id, profile, district, name, warning_level_m\r\n"
        "\r\n"
        ' rg-1 , water_gauge, pudong, "Bridge, north side", 4.8\r\n'
        ",,,,\r\n",
    )

    assert result.problems == []
    assert result.rows == 1
    (record,) = result.records
    assert (record.device_id, record.name) == ("rg-1", "Bridge, north side")


def test_byte_order_mark_is_accepted(tmp_path: Path) -> None:
    path = tmp_path / "excel.csv"
    path.write_bytes(
        "id,profile,district,name,warning_level_m\nrg-1,water_gauge,pudong,外滩,4.8\n".encode(
            "utf-8-sig"
        )
    )

    result = read_registry_csv(path, PROFILES)

    assert result.problems == []
    assert result.records[0].name == "外滩"
    assert result.path == path


def test_parse_strips_a_byte_order_mark_left_in_the_text() -> None:
    text = "\ufeffid,profile,district,warning_level_m\nrg-1,water_gauge,pudong,4.8\n"

    result = parse_registry_csv(io.StringIO(text, newline=""), PROFILES, Path("stdin"))

    assert [r.device_id for r in result.records] == ["rg-1"]


def test_missing_required_columns_raise(tmp_path: Path) -> None:
    with pytest.raises(RegistryError) as caught:
        read(tmp_path, "device,profile,name\nrg-1,water_gauge,x\n")

    message = str(caught.value)
    assert str(tmp_path / "devices.csv") in message
    assert "lacks column(s) id, district" in message
    assert "id,profile,district,name,lat,lon" in message


def test_semicolon_separated_file_gets_a_hint(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="separated by commas"):
        read(tmp_path, "id;profile;district\nrg-1;water_gauge;pudong\n")


def test_duplicate_column_raises(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="columns 4 and 5 are both named 'zone'"):
        read(tmp_path, "id,profile,district,zone,zone\n")


@pytest.mark.parametrize("text", ["", "\n\n", " , \n"])
def test_empty_file_raises(tmp_path: Path, text: str) -> None:
    with pytest.raises(RegistryError, match="the file is empty"):
        read(tmp_path, text)


def test_header_only_file_is_an_empty_import(tmp_path: Path) -> None:
    result = read(tmp_path, HEADER)

    assert (result.records, result.problems, result.rows) == ([], [], 0)


def test_unreadable_file_raises(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match="cannot read the device registry"):
        read_registry_csv(tmp_path / "absent.csv", PROFILES)
    with pytest.raises(RegistryError, match="cannot read the device registry"):
        read_registry_csv(tmp_path, PROFILES)


def test_file_that_is_not_utf8_raises(tmp_path: Path) -> None:
    path = tmp_path / "gbk.csv"
    path.write_bytes("id,profile,district,name\nrg-1,water_gauge,pudong,外滩\n".encode("gbk"))

    with pytest.raises(RegistryError, match=r"not UTF-8 text.*CSV UTF-8"):
        read_registry_csv(path, PROFILES)


def test_unclosed_quote_raises_with_its_line(tmp_path: Path) -> None:
    with pytest.raises(RegistryError, match=r"devices\.csv:3: cannot split the row"):
        read(tmp_path, HEADER + "rg-1,water_gauge,pudong,,,,4.8,\n" + 'rg-2,water_gauge,"pud\n')


def test_round_trip(tmp_path: Path) -> None:
    records = [
        DeviceRecord("rg-0001", "water_gauge", "pudong", 'Huangpu, "Wusong"\nmouth', 31.38, 121.5,
                     {"warning_level_m": 4.8, "datum": "wusong", "owner": "水务局"}),
        DeviceRecord("rg-0002", "water_gauge", "minhang", "", None, None,
                     {"warning_level_m": 3.0, "datum": "local"}),
        DeviceRecord("nz-0001", "noise_monitor", "jingan", "Nanjing Rd W", -0.000001, 180.0,
                     {"zone": "4b"}),
    ]  # fmt: skip
    path = tmp_path / "registry.csv"

    write_registry_csv(path, records)
    result = read_registry_csv(path, PROFILES)

    assert result.problems == []
    assert result.records == records
    assert path.read_text(encoding="utf-8").splitlines()[0] == (
        "id,profile,district,name,lat,lon,datum,owner,warning_level_m,zone"
    )


def test_round_trip_with_byte_order_mark(tmp_path: Path) -> None:
    records = [DeviceRecord("nz-1", "noise_monitor", "huangpu", "外滩", None, None, {"zone": "1"})]
    path = tmp_path / "registry.csv"

    write_registry_csv(path, records, bom=True)

    assert path.read_bytes().startswith(b"\xef\xbb\xbf")
    assert read_registry_csv(path, PROFILES).records == [
        DeviceRecord("nz-1", "noise_monitor", "huangpu", "外滩", None, None, {"zone": "1"})
    ]


def test_write_formats_booleans_and_ints(tmp_path: Path) -> None:
    path = tmp_path / "registry.csv"
    write_registry_csv(path, [DeviceRecord("x-1", "p", "d", "", None, None, {"a": True, "b": 3})])

    assert path.read_bytes() == b"id,profile,district,name,lat,lon,a,b\r\nx-1,p,d,,,,true,3\r\n"


@pytest.mark.parametrize(
    ("attributes", "match"),
    [
        ({"lat": 1.0}, "attribute name 'lat' cannot be a registry column"),
        ({" zone": "1"}, "attribute name ' zone' cannot be a registry column"),
        ({"tags": ["a", "b"]}, "device x-1: attribute tags is a list"),
    ],
)
def test_write_refuses_what_cannot_be_read_back(
    tmp_path: Path, attributes: dict[str, object], match: str
) -> None:
    path = tmp_path / "registry.csv"

    with pytest.raises(ValueError, match=match):
        write_registry_csv(path, [DeviceRecord("x-1", "p", "d", "", None, None, attributes)])
    assert not path.exists()


COLUMNS = ["id", "profile", "district", "name", "lat", "lon", "warning_level_m", "zone", "owner"]
# Mostly plausible cells, so rows often get far enough to exercise the later checks.
CELLS = st.one_of(
    st.text(),
    st.sampled_from(["rg-1", "rg-2", "water_gauge", "noise_monitor", "pudong", "4a", ""]),
    st.floats(allow_nan=True, allow_infinity=True).map(str),
)


@settings(max_examples=300, deadline=None)
@given(st.lists(st.lists(CELLS, min_size=0, max_size=len(COLUMNS) + 2), max_size=8))
def test_arbitrary_cells_give_records_or_problems(rows: list[list[str]]) -> None:
    buffer = io.StringIO(newline="")
    writer = csv.writer(buffer)
    writer.writerow(COLUMNS)
    writer.writerows(rows)
    text = buffer.getvalue()

    result = parse_registry_csv(io.StringIO(text, newline=""), PROFILES, Path("fuzz.csv"))

    non_blank = [row for row in rows if any(cell.strip() for cell in row)]
    assert result.rows == len(non_blank)
    assert len(result.records) + result.rejected == result.rows
    line_count = len(io.StringIO(text, newline="").readlines())
    assert all(2 <= p.line <= line_count and p.message for p in result.problems)
    for record in result.records:
        assert record.profile in PROFILES
        assert record.lat is None or -90 <= record.lat <= 90
        assert record.lon is None or -180 <= record.lon <= 180


TOPIC_LEVEL = st.from_regex(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,20}", fullmatch=True)
TRIMMED_TEXT = st.text(max_size=30).map(str.strip)


@st.composite
def device_records(draw: st.DrawFn) -> DeviceRecord:
    located = draw(st.booleans())
    lat = draw(st.floats(-90, 90)) if located else None
    lon = draw(st.floats(-180, 180)) if located else None
    attributes: dict[str, object]
    if draw(st.booleans()):
        profile = "noise_monitor"
        attributes = {"zone": draw(st.sampled_from(["0", "1", "2", "3", "4a", "4b"]))}
    else:
        profile = "water_gauge"
        attributes = {
            "warning_level_m": draw(st.floats(allow_nan=False, allow_infinity=False)),
            "datum": draw(TRIMMED_TEXT.filter(bool)),
        }
        if draw(st.booleans()):
            attributes["owner"] = draw(TRIMMED_TEXT.filter(bool))
    return DeviceRecord(
        device_id=draw(TOPIC_LEVEL),
        profile=profile,
        district=draw(TOPIC_LEVEL),
        name=draw(TRIMMED_TEXT),
        lat=lat,
        lon=lon,
        attributes=attributes,
    )


@settings(max_examples=200, deadline=None)
@given(st.lists(device_records(), max_size=6, unique_by=lambda r: r.device_id))
def test_written_records_read_back_equal(records: list[DeviceRecord]) -> None:
    with tempfile.TemporaryDirectory() as directory:
        path = Path(directory) / "registry.csv"
        write_registry_csv(path, records)
        result = read_registry_csv(path, PROFILES)

    assert result.problems == []
    assert result.records == records
