"""The S3 key layout: the keys under which stored data already lies must not move."""

from __future__ import annotations

from gantry import resources


def test_every_key_is_where_stored_data_already_is() -> None:
    assert resources.invocation_key("j", 2) == "io/j/2/invocation.json"
    assert resources.io_input_prefix("j", 2) == "io/j/2/input/"
    assert resources.io_model_key("j", 2) == "io/j/2/model.tar.gz"
    assert (
        resources.result_key(resources.io_output_prefix("j", 2))
        == "io/j/2/output/.sagemaker_shim/inference_result.json"
    )
    assert resources.model_key("a", "m") == "models/a/m.tar.gz"
    assert resources.upload_key("alice", "u", "ct.mha") == "uploads/alice/u/ct.mha"
    assert resources.value_key("j", 7, "report.pdf") == "values/j/7/report.pdf"
    assert resources.output_value_key("j", 2, "mask", "m.mha") == "values/j/2/mask/m.mha"
    assert resources.archive_value_key("i", "j", "mask", "m.mha") == "values/i/j/mask/m.mha"
    assert resources.image_file_key("im", "ct.mha") == "values/images/im/ct.mha"
    assert resources.dropbox_folder("seg") == "dropbox/seg/"
    assert resources.dropbox_folder("seg", "case1") == "dropbox/seg/case1/"
    assert resources.dropbox_results_prefix("seg/case1") == "dropbox-results/seg/case1/"
