"""Replay: CSV rows → telemetry messages, the Beijing converter and the shipped sample."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta, timezone
from pathlib import Path
from typing import Any

import orjson
import pytest

from devices import Quality, load_profiles
from devices.profile import ProfileSet
from devices.registry import DeviceRecord, read_registry_csv
from ingest.decode import MessageDecoder
from simulators.datasets import beijing_air, make_sample
from simulators.model import WireMessage
from simulators.replay import ReplayError, read_replay_csv, replay_messages

PROFILES: ProfileSet = load_profiles()
CST = timezone(timedelta(hours=8))
DEMO_REGISTRY = Path(__file__).parents[2] / "cityvitals" / "demo_devices.csv"
SAMPLE = Path(make_sample.__file__).with_name("sample_replay.csv")


def record(device_id: str, profile: str, district: str) -> DeviceRecord:
    return DeviceRecord(device_id, profile, district, "", None, None, {})


REGISTRY = [
    record("wl-1", "water_level", "pudong"),
    record("aq-1", "air_quality", "huangpu"),
    record("el-1", "elevator", "pudong"),
]


def write(tmp_path: Path, text: str, name: str = "replay.csv") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def replay(path: Path, registry: list[DeviceRecord] = REGISTRY, **kwargs: Any) -> list[WireMessage]:
    return list(replay_messages(read_replay_csv(path), registry, **kwargs))


def body(msg: WireMessage) -> dict[str, Any]:
    data = orjson.loads(msg.payload)
    assert isinstance(data, dict)
    return data


# --- grouping -------------------------------------------------------------------------


def test_rows_of_one_time_and_device_become_one_message(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ts,device,metric,value\n"
        "2026-11-25T10:00:00+08:00,wl-1,level_m,3.21\n"
        "2026-11-25T10:00:00+08:00,wl-1,battery_v,3.6\n"
        "2026-11-25T10:00:00+08:00,aq-1,pm2_5,35\n"
        "2026-11-25T10:00:00+08:00,wl-1,trend,rising\n"
        "2026-11-25T10:05:00+08:00,wl-1,level_m,3.25\n",
    )
    messages = replay(path)
    assert [(m.device_id, m.t) for m in messages] == [
        ("wl-1", datetime(2026, 11, 25, 10, tzinfo=CST)),
        ("aq-1", datetime(2026, 11, 25, 10, tzinfo=CST)),
        ("wl-1", datetime(2026, 11, 25, 10, 5, tzinfo=CST)),
    ]
    first = messages[0]
    assert first.payload == orjson.dumps(
        {
            "ts": "2026-11-25T10:00:00+08:00",
            "values": {"level_m": 3.21, "battery_v": 3.6, "trend": "rising"},
        }
    )
    assert first.topic == "city/pudong/water_level/wl-1/telemetry"
    assert (first.channel, first.qos, first.retain) == ("telemetry", 1, False)
    assert messages[1].topic == "city/huangpu/air_quality/aq-1/telemetry"
    assert body(messages[1])["values"] == {"pm2_5": 35}


def test_messages_decode_cleanly_in_the_ingest(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ts,device,metric,value\n"
        "1764036000000,wl-1,level_m,3.21\n"
        "1764036000000,wl-1,trend,1\n"
        "1764036000000,el-1,state,running\n"
        "1764036000000,el-1,floor,7.0\n"
        "1764036000000,el-1,passengers_present,1\n",
    )
    messages = replay(path, root="test", profiles=PROFILES)
    decoder = MessageDecoder(PROFILES, {r.device_id: r.profile for r in REGISTRY}, root="test")
    ts = datetime(2025, 11, 25, 2, tzinfo=UTC)
    readings = []
    for m in messages:
        decoded = decoder.decode(m.topic, m.payload, ts)
        assert decoded.dead_letter is None, decoded.dead_letter
        readings += decoded.readings
    assert {(r.metric, r.value) for r in readings} == {
        ("level_m", 3.21),
        ("trend", 1.0),
        ("state", 1.0),
        ("floor", 7.0),
        ("passengers_present", 1.0),
    }
    assert {r.ts for r in readings} == {ts}
    assert body(messages[0])["values"]["trend"] == "rising", "codes become the profile's words"
    assert body(messages[1])["values"] == {
        "state": "running",
        "floor": 7,
        "passengers_present": True,
    }


def test_profile_and_district_columns_place_unregistered_devices(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ts,device,metric,value,profile,district\n"
        "2026-11-25T10:00:00+08:00,nz-9,laeq_db,55.5,noise,minhang\n"
        "2026-11-25T10:00:00+08:00,wl-1,level_m,3.2,,\n",
    )
    messages = replay(path)
    assert [m.topic for m in messages] == [
        "city/minhang/noise/nz-9/telemetry",
        "city/pudong/water_level/wl-1/telemetry",
    ]


def test_missing_values_are_skipped(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ts,device,metric,value\n"
        "2026-11-25T10:00:00+08:00,wl-1,level_m,NA\n"
        "2026-11-25T10:00:00+08:00,wl-1,battery_v,\n"
        "\n"
        "2026-11-25T10:00:00+08:00,wl-1,rssi_dbm,-71\n",
    )
    assert [body(m)["values"] for m in replay(path)] == [{"rssi_dbm": -71}]


# --- errors name file, line and column --------------------------------------------------


def test_rows_out_of_time_order_are_an_error(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ts,device,metric,value\n"
        "2026-11-25T10:05:00+08:00,wl-1,level_m,3.2\n"
        "2026-11-25T10:00:00+08:00,wl-1,level_m,3.1\n",
    )
    with pytest.raises(ReplayError) as caught:
        replay(path)
    message = str(caught.value)
    assert f"{path}:3: column ts:" in message
    assert "line 2" in message and "sort the file by ts" in message


def test_a_device_missing_from_the_registry_is_named_with_its_line(tmp_path: Path) -> None:
    path = write(
        tmp_path,
        "ts,device,metric,value\n"
        "2026-11-25T10:00:00+08:00,wl-1,level_m,3.2\n"
        "2026-11-25T10:05:00+08:00,wl-404,level_m,3.1\n",
    )
    with pytest.raises(ReplayError, match=rf"{path}:3: column device: wl-404 is not in the"):
        replay(path)


@pytest.mark.parametrize(
    ("row", "message"),
    [
        (
            "2026-11-25T10:00:00,wl-1,level_m,3",
            "column ts: '2026-11-25T10:00:00' has no UTC offset",
        ),
        ("1764036000,wl-1,level_m,3", "column ts: 1764036000 is not epoch milliseconds"),
        ("yesterday,wl-1,level_m,3", "column ts: 'yesterday' is neither ISO 8601"),
        ("1764036000000,wl 1,level_m,3", "column device: 'wl 1' is not a device id"),
        ("1764036000000,wl-1,Level,3", "column metric: 'Level' is not a metric name"),
        ("1764036000000,wl-1,level_m,inf", "column value: 'inf' is not a finite number"),
        ("1764036000000,wl-1,level_m,3 m", "column value: '3 m' is neither a number"),
        ("1764036000000,wl-1,level_m", "the row has 3 cells, the header 4"),
    ],
)
def test_bad_cells_are_named(tmp_path: Path, row: str, message: str) -> None:
    path = write(tmp_path, f"ts,device,metric,value\n{row}\n")
    with pytest.raises(ReplayError) as caught:
        replay(path)
    assert f"{path}:2: " in str(caught.value)
    assert message in str(caught.value)


@pytest.mark.parametrize(
    ("rows", "message"),
    [
        (
            "1764036000000,wl-1,flow,3",
            ":2: column metric: flow is not a metric of profile water_level",
        ),
        ("1764036000000,wl-1,trend,up", ":2: column value: trend: 'up' is not one of falling"),
        ("1764036000000,el-1,floor,7.5", ":2: column value: floor: 7.5 is not an integer"),
        ("1764036000000,wl-1,level_m,high", ":2: column value: level_m: 'high' is not a number"),
        (
            "1764036000000,wl-1,level_m,3\n1764036000000,wl-1,level_m,4",
            ":3: column metric: level_m of device wl-1 at 2025-11-25T02:00:00+00:00 already "
            "appears on line 2",
        ),
        (
            "1764036000000,wl-1,level_m,3,noise,pudong",
            ":2: column profile: device wl-1 is registered with profile 'water_level', not 'noise'",
        ),
    ],
)
def test_rows_are_checked_against_the_profile(tmp_path: Path, rows: str, message: str) -> None:
    header = "ts,device,metric,value" + (",profile,district" if "noise" in rows else "")
    path = write(tmp_path, f"{header}\n{rows}\n")
    with pytest.raises(ReplayError) as caught:
        replay(path, profiles=PROFILES)
    assert f"{path}{message}" in str(caught.value)


def test_bad_headers_and_files(tmp_path: Path) -> None:
    with pytest.raises(ReplayError, match=r":1: the header lacks column\(s\) metric"):
        replay(write(tmp_path, "ts,device,value\n"))
    with pytest.raises(ReplayError, match="the file is empty"):
        replay(write(tmp_path, ""))
    with pytest.raises(ReplayError, match="cannot read the replay file"):
        replay(tmp_path / "absent.csv")
    latin1 = tmp_path / "latin1.csv"
    latin1.write_bytes(
        "ts,device,metric,value\n1764036000000,wl-1,level_m,3\xb0\n".encode("latin-1")
    )
    with pytest.raises(ReplayError, match="not UTF-8"):
        replay(latin1)


# --- the Beijing converter ---------------------------------------------------------------

HEADER = "No,year,month,day,hour,PM2.5,PM10,SO2,NO2,CO,O3,TEMP,PRES,DEWP,RAIN,wd,WSPM,station\n"


def test_beijing_converter_on_a_synthetic_fixture(tmp_path: Path) -> None:
    # Made-up numbers in the data set's layout; not real measurements.
    source = write(
        tmp_path,
        HEADER
        + "1,2016,12,20,0,150,210,12,80,3000,5,-2.5,1025,-10,0,NW,1.2,Dongsi\n"
        + "2,2016,12,20,1,NA,NA,NA,NA,NA,NA,NA,1025,-10,0,NW,1.2,Dongsi\n"
        + '"3","2016","12","20","2","180","NA","14","85","300","4","-3",'
        + '"1025","-10","0","N","1","Dongsi"\n',
        "PRSA_Data_Dongsi_test.csv",
    )
    out, registry_out = tmp_path / "replay.csv", tmp_path / "devices.csv"
    assert (
        beijing_air.main([str(source), "--out", str(out), "--registry-out", str(registry_out)]) == 0
    )

    rows = list(read_replay_csv(out))
    assert [(r.ts.isoformat(), r.metric, r.value) for r in rows] == [
        ("2016-12-20T00:00:00+08:00", "pm2_5", 150),
        ("2016-12-20T00:00:00+08:00", "pm10", 210),
        ("2016-12-20T00:00:00+08:00", "so2", 12),
        ("2016-12-20T00:00:00+08:00", "no2", 80),
        ("2016-12-20T00:00:00+08:00", "co", 3),
        ("2016-12-20T00:00:00+08:00", "o3", 5),
        ("2016-12-20T00:00:00+08:00", "temperature_c", -2.5),
        ("2016-12-20T02:00:00+08:00", "pm2_5", 180),
        ("2016-12-20T02:00:00+08:00", "so2", 14),
        ("2016-12-20T02:00:00+08:00", "no2", 85),
        ("2016-12-20T02:00:00+08:00", "co", 0.3),
        ("2016-12-20T02:00:00+08:00", "o3", 4),
        ("2016-12-20T02:00:00+08:00", "temperature_c", -3),
    ]
    assert {r.device for r in rows} == {"aq-bj-dongsi"}

    imported = read_registry_csv(registry_out, PROFILES)
    assert imported.problems == []
    (station,) = imported.records
    assert (station.device_id, station.profile, station.district) == (
        "aq-bj-dongsi",
        "air_quality",
        "dongsi",
    )
    assert station.lat is not None and 39.8 < station.lat < 40.0
    assert station.attributes["station_type"] == "national"

    messages = list(replay_messages(rows, imported.records, profiles=PROFILES))
    assert len(messages) == 2
    decoder = MessageDecoder(PROFILES, {station.device_id: "air_quality"})
    for m in messages:
        decoded = decoder.decode(m.topic, m.payload, m.t)
        assert decoded.dead_letter is None
        assert all(r.quality == Quality.GOOD for r in decoded.readings)


def test_beijing_converter_merges_stations_in_time_order_and_cuts_a_window(tmp_path: Path) -> None:
    a = write(
        tmp_path,
        HEADER + "1,2016,12,20,0,1,,,,,,,,,,,,Tiantan\n2,2016,12,20,1,2,,,,,,,,,,,,Tiantan\n",
        "a.csv",
    )
    b = write(
        tmp_path,
        HEADER
        + "1,2016,12,20,0,3,,,,,,,,,,,,Aotizhongxin\n2,2016,12,21,0,4,,,,,,,,,,,,Aotizhongxin\n",
        "b.csv",
    )
    out = tmp_path / "replay.csv"
    summary = beijing_air.convert([a, b], out, until=datetime(2016, 12, 21).date())
    rows = list(read_replay_csv(out))
    assert [(r.ts.hour, r.device, r.value) for r in rows] == [
        (0, "aq-bj-aotizhongxin", 3),
        (0, "aq-bj-tiantan", 1),
        (1, "aq-bj-tiantan", 2),
    ]
    assert summary.readings_written == 3


def test_beijing_converter_names_bad_input(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    bad = write(tmp_path, HEADER + "1,2016,12,20,0,lots,,,,,,,,,,,,Dongsi\n", "bad.csv")
    assert beijing_air.main([str(bad), "--out", str(tmp_path / "x.csv")]) == 1
    assert f"{bad}:2: column PM2.5: 'lots' is not a number or NA" in capsys.readouterr().err
    wrong = write(tmp_path, "ts,device,metric,value\n", "wrong.csv")
    with pytest.raises(beijing_air.ConversionError, match="lacks year, month"):
        beijing_air.convert([wrong], tmp_path / "y.csv")


# --- the shipped sample --------------------------------------------------------------------


def test_the_shipped_sample_is_what_its_script_generates(tmp_path: Path) -> None:
    regenerated = tmp_path / "sample.csv"
    assert make_sample.write_sample(regenerated) == 200
    assert regenerated.read_bytes() == SAMPLE.read_bytes()


def test_the_shipped_sample_replays_for_the_demo_registry() -> None:
    registry = read_registry_csv(DEMO_REGISTRY, PROFILES)
    assert registry.problems == []
    rows = list(read_replay_csv(SAMPLE))
    assert len(rows) == 200
    messages = list(replay_messages(rows, registry.records, profiles=PROFILES))
    decoder = MessageDecoder(PROFILES, {r.device_id: r.profile for r in registry.records})
    readings = []
    for m in messages:
        decoded = decoder.decode(m.topic, m.payload, m.t)
        assert decoded.dead_letter is None, decoded.dead_letter
        assert decoded.new_device is None
        readings += decoded.readings
    assert len(readings) == 200
    assert all(r.quality == Quality.GOOD for r in readings)
    assert {m.device_id for m in messages} == {r.device_id for r in registry.records}
    assert [m.t for m in messages] == sorted(m.t for m in messages)
