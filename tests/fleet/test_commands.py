import pytest
from django.core.management import CommandError, call_command

from fleet.models import CatalogOffer, Cluster

from .conftest import CATALOG_HEADER, REGION_HEADER, write_csv


@pytest.mark.django_db
def test_import_catalog_command_prints_rejected_rows(tmp_path, capsys):
    write_csv(
        tmp_path / "regions.csv",
        REGION_HEADER,
        [["nebius", "eu-north1", "Finland", "Mantsala", "Finland", "FI", "60.63", "25.32"]],
    )
    call_command("import_regions", str(tmp_path / "regions.csv"))
    rows = [["a", "H100", "1", "2.95", "", "eu-north1"], ["b", "tpu-v4-8", "1", "3", "", "eu-north1"]]
    path = write_csv(tmp_path / "nebius_gpu_vms.csv", CATALOG_HEADER, rows)

    call_command("import_catalog", str(path))

    output = capsys.readouterr()
    assert "nebius_gpu_vms.csv:3: not a GPU SKU MCM schedules: 'tpu-v4-8'" in output.err
    assert "1 offers created" in output.out
    assert CatalogOffer.objects.count() == 1


@pytest.mark.django_db
def test_import_catalog_command_fails_when_nothing_imports(tmp_path):
    path = write_csv(tmp_path / "gcp_gpu_vms.csv", CATALOG_HEADER, [["a", "tpu-v4-8", "1", "3", "", "us-central1"]])

    with pytest.raises(CommandError, match="no offer could be imported"):
        call_command("import_catalog", str(path))


@pytest.mark.django_db
def test_import_catalog_command_names_a_missing_path(tmp_path):
    with pytest.raises(CommandError, match="missing.csv"):
        call_command("import_catalog", str(tmp_path / "missing.csv"))


@pytest.mark.django_db
def test_import_regions_command_missing_columns(tmp_path):
    path = write_csv(tmp_path / "regions.csv", ["provider", "region_code"], [["aws", "us-east-1"]])

    with pytest.raises(CommandError, match="lacks the required column"):
        call_command("import_regions", str(path))


@pytest.mark.django_db
def test_build_fleet_command_without_offers_fails(capsys):
    with pytest.raises(CommandError, match="no region has catalog offers"):
        call_command("build_fleet", "--seed", "3")


@pytest.mark.django_db
def test_load_builtin_fleet_then_build_fleet_commands(capsys):
    call_command("load_builtin_fleet")
    clusters = Cluster.objects.count()

    call_command("build_fleet", "--seed", "2024", "--max-clusters", "5")

    assert Cluster.objects.count() == clusters
    assert "clusters unchanged: 5" in capsys.readouterr().out
