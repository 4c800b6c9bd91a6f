"""Stand-in for transformers' tests/utils/test_configuration_utils.py (not in the sdist): `config_common_kwargs`,
read by ConfigTester.check_config_arguments_init, which checks that every config class stores the common
`PreTrainedConfig` arguments it is given. Here: every such field of transformers 5.x, each with a non-default value
(`dtype` is compared with torch.float16 by the test itself)."""

config_common_kwargs = {
    "return_dict": False,
    "output_hidden_states": True,
    "dtype": "float16",
    "chunk_size_feed_forward": 5,
    "is_encoder_decoder": True,
    "architectures": ["PaCaViTForImageClassification"],
    "id2label": {0: "cat", 1: "dog"},
    "label2id": {"cat": 0, "dog": 1},
    "problem_type": "single_label_classification",
}
