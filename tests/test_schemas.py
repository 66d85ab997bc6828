from cxrctx import schema_export


def test_schema_files_are_current():
    stale = schema_export.stale()
    assert not stale, f"regenerate with `cxrctx schemas`: {stale}"


def test_every_registered_model_loads():
    for stem, spec in schema_export.REGISTRY.items():
        schema = schema_export.render_schema(spec)
        assert '"title"' in schema, stem


def test_stale_detects_edits(tmp_path):
    schema_export.write_all(tmp_path)
    assert schema_export.stale(tmp_path) == []
    first = sorted(tmp_path.glob("*.json"))[0]
    first.write_text("{}\n")
    assert schema_export.stale(tmp_path) == [first.name]
