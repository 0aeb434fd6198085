"""bench/sizing.py: the arithmetic of the README's sizing table, and the ceiling run against the
real MeiliSearch (small: it checks counts, never timings)."""
from __future__ import annotations

import pytest

from bench import sizing


def test_images_per_core_is_one_busy_core_of_consumer_and_worker_cpu():
    per_core, detail = sizing.images_per_core({"active_cpu_seconds": 1.0, "worker_cpu_seconds": 3.0}, 200)
    assert per_core == pytest.approx(50.0)  # 20 ms of CPU per image
    assert detail == {"consumer_cpu_ms_per_image": 5.0, "worker_cpu_ms_per_image": 15.0}
    assert sizing.images_per_core({"active_cpu_seconds": None, "worker_cpu_seconds": 3.0}, 200) == (None, {})


def test_the_table_turns_per_core_and_the_ceiling_into_hosts_per_day_and_the_limit():
    table = sizing.sizing_table(50.0, 1000.0, {"two": (2, 0.1), "eight": (8, 0.4)})
    assert table["two"] == {"vcpus": 2, "images_per_second": 100.0, "images_per_day": 8_640_000,
                            "hosts_before_meilisearch_limits": 10, "usd_per_hour": 0.1,
                            "usd_per_million_images": pytest.approx(0.28, abs=0.01)}
    assert table["eight"]["hosts_before_meilisearch_limits"] == 2  # 400 images/s each: 2 keep up, 3 do not


def test_the_figures_name_the_limit_for_the_fleets_default_host_type():
    summary = {"active_cpu_seconds": 1.0, "worker_cpu_seconds": 3.0, "active_images_per_second": 30.0}
    per_core, ceiling, limit = sizing.sizing_figures(summary, 200, (1000.0, 2000.0), processing_floor=80.0)
    assert (per_core.name, per_core.value, per_core.ratio) == ("sizing_images_per_core", 50.0, 0.625)
    assert ceiling.value == 1000.0 and ceiling.detail["documents_per_meilisearch_cpu_second"] == 2000.0
    assert limit.name == "sizing_fleet_limit_c7i_large" and limit.value == 10  # 2 vCPUs x 50 = 100 images/s
    assert set(limit.detail["table"]) == set(sizing.HOST_TYPES)


@pytest.mark.integration
def test_the_ceiling_run_indexes_every_document_from_several_writers(stack, unique):
    from fixtures.documents import sample_documents
    from imgpipe import meili

    index = f"bench_{unique}_ceiling"
    try:
        rate, per_cpu_second = sizing.indexing_ceiling(stack.with_overrides(consumer_batch_size=10), index,
                                                       sample_documents(60, seed=3), writers=3)
        assert rate > 0 and (per_cpu_second is None or per_cpu_second > 0)
        assert meili.document_count(stack, index) == 60
    finally:
        meili.delete_index(stack, index, key=stack.meili_master_key)
