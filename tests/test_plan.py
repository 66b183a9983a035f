"""Layer plans: ratio scaling, validation, and the papers' parameter counts."""

from __future__ import annotations

import pytest

from layerpeft.commands.plan import plan_summary
from layerpeft.config import compose
from layerpeft.plan import PlanError, build_plan, parse_parts, scale_parts

HLPT = {"name": "hlpt", "bottom": "lora_ffn", "top": "prefix", "ratio": "3:1", "gate": True}


def summary(*overrides):
    return plan_summary(compose("plan", list(overrides)))


@pytest.mark.parametrize(
    "sizes,layers,expected",
    [
        ([24, 8], 32, [24, 8]),  # adds up: counts
        ([24, 8], 30, [23, 7]),  # the design notes' example: ties go to the lower segment
        ([3, 1], 28, [21, 7]),  # HLPT on GPT-J
        ([3, 1], 40, [30, 10]),
        ([3, 4, 1], 32, [12, 16, 4]),
        ([3, 4, 1], 40, [15, 20, 5]),
        ([3, 3, 1], 28, [12, 12, 4]),
        ([5, 27], 30, [5, 25]),  # 4.6875 + 25.3125: the larger remainder wins
        ([6, 24, 2], 30, [6, 22, 2]),
    ],
)
def test_scale_parts(sizes, layers, expected):
    assert scale_parts(sizes, layers) == expected
    assert sum(scale_parts(sizes, layers)) == layers


@pytest.mark.parametrize("ratio", ["5:27", "8:24", "11:21", "16:16", "21:11", "24:8", "27:5"])
def test_paper_ratio_sweep_on_llama7b(ratio):
    bottom, top = map(int, ratio.split(":"))
    s = summary("model=llama7b", "method=hlpt", f"layer_ratio={ratio}")
    assert [len(x) for x in s["layers"]].count(1) == 32
    assert sum(1 for x in s["layers"] if x == ["lora_ffn"]) == bottom
    assert all(x == ["prefix"] for x in s["layers"][bottom:])
    # each LoRA-FFN layer: A (8×11008) + B (4096×8) + gate (11008+1); prefix: 2×20×4096 + gate
    assert s["trainable_params"] == bottom * 131_841 + top * 167_937


@pytest.mark.parametrize(
    "model,method,params",
    [
        # HLPT paper Table 5: 7.86M / 4.19M / 4.51M / 2.25M and 12.29M / 6.55M / 7.06M / 3.53M
        ("llama7b", "prefix", 7_864_320),
        ("llama7b", "lora", 4_194_304),
        ("llama7b", "hlpt", 4_507_680),
        ("llama7b", "h2lpt", 2_253_840),
        ("llama13b", "prefix", 12_288_000),
        ("llama13b", "lora", 6_553_600),
        ("llama13b", "hlpt", 7_060_520),
        ("llama13b", "h2lpt", 3_530_260),
        # SmolLM2-135M (d 576, FFN 1536, GQA: 3 key-value heads of 64): prefix 30 × 30 × (192 + 192),
        # LoRA q,v r=8 30 × 8 × (2·576 + 576 + 192); a gated LoRA-FFN layer 8·1536 + 576·8 + (1536 + 1),
        # a gated prefix layer (20 tokens) 2·20·192 + (576 + 1); HLPT 23:7, H²LPT 11:15:4
        ("smollm2_135m", "prefix", 30 * 30 * (192 + 192)),
        ("smollm2_135m", "lora", 30 * 8 * (2 * 576 + 576 + 192)),
        ("smollm2_135m", "hlpt", 23 * (8 * 1536 + 576 * 8 + 1537) + 7 * (2 * 20 * 192 + 577)),
        ("smollm2_135m", "h2lpt", 11 * (8 * 1536 + 576 * 8 + 1537) + 4 * (2 * 20 * 192 + 577)),
        # (IA)^3 on LLaMA-7B: 32 × (4096 + 4096 + 11008)
        ("llama7b", "ia3", 614_400),
        # the HLPT paper's adapter baseline as LLM-Adapters places it: three bias-free 4096↔256
        # bottlenecks per layer (gate and up inputs, down output) = the paper's 201.33M (Table 10)
        ("llama7b", "parallel", 32 * 3 * 2 * 4096 * 256),
        ("gptj6b", "parallel", 28 * 2 * 2 * 4096 * 256),  # GPT-J: fc_in's input and fc_out's output
        ("llama7b", "none", 0),
        # survey baselines (hand-computed): DoRA = LoRA + a magnitude per output row of q and v
        ("llama7b", "dora", 4_194_304 + 32 * 2 * 4096),
        ("llama7b", "lora_all", 32 * 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008))),
        # LLM-Adapters' / the IST paper's LoRA: q, k, v, up, down at r=32 (56.1M, 0.83 % of 7B)
        ("llama7b", "lora_qkvud", 32 * 32 * (3 * (4096 + 4096) + 2 * (4096 + 11008))),
        ("llama7b", "ln_tuning", 32 * 2 * 4096),  # two RMSNorm gains per layer, no biases
        # MAM: prefix (30 tokens) + parallel adapter (512, with biases)
        ("llama7b", "mam", 7_864_320 + 32 * (4096 * 512 + 512 + 512 * 4096 + 4096)),
        # UniPELT: gated LoRA q,v + gated prefix (10) + gated Pfeiffer adapter (64)
        ("llama7b", "unipelt", 32 * (2 * (2 * 4096 * 8 + 4097) + (2 * 10 * 4096 + 4097)
                                     + (4096 * 64 + 64 + 64 * 4096 + 4096 + 4097))),
        # BitFit on GPT-J: fc_in (16384) + fc_out (4096) + ln_1 (4096) biases per layer
        ("gptj6b", "bitfit", 28 * (16_384 + 4_096 + 4_096)),
    ],
)
def test_paper_parameter_counts(model, method, params):
    assert summary(f"model={model}", f"method={method}")["trainable_params"] == params


def test_parallel_adapter_beside_the_ffn_as_he_et_al():
    ffn = summary("model=llama7b", "method=parallel", "method.options.parallel.placement=ffn",
                  "method.options.parallel.bias=true", "method.options.parallel.init=mam")
    assert ffn["trainable_params"] == 32 * (4096 * 256 + 256 + 256 * 4096 + 4096)


def test_hlpt_default_layouts_per_family():
    assert [s["end"] - s["start"] for s in summary("model=gptj6b", "method=hlpt")["segments"]] == [21, 7]
    assert [s["end"] - s["start"] for s in summary("model=gptj6b", "method=h2lpt")["segments"]] == [12, 12, 4]
    assert [s["end"] - s["start"] for s in summary("model=llama13b", "method=h2lpt")["segments"]] == [15, 20, 5]
    assert [s["end"] - s["start"] for s in summary("model=smollm2_135m", "method=hlpt")["segments"]] == [23, 7]


def test_ablations_change_modules_and_counts():
    no_gate = summary("model=llama7b", "method=hlpt", "method.gate=false")
    assert no_gate["trainable_params"] == 4_507_680 - 24 * 11_009 - 8 * 4_097
    attn = summary("model=llama7b", "method=hlpt", "method.bottom=lora_attn")
    assert attn["layers"][0] == ["lora_attn"]
    # gated LoRA on q and v: 2 × (8·4096 + 4096·8 + 4097)
    assert attn["trainable_params"] == 24 * 2 * (65_536 + 4_097) + 8 * 167_937
    all_lin = summary("model=llama7b", "method=lora", "method.options.lora.targets=all")
    per_layer = 8 * (4 * (4096 + 4096) + 3 * (4096 + 11008))
    assert all_lin["trainable_params"] == 32 * per_layer


def test_explicit_segments_and_scaling():
    s = summary("model=llama7b", "method=hlpt", "layer_ratio=layers25pct")
    assert [(x["module"], x["end"] - x["start"]) for x in s["segments"]] == [
        ("lora_ffn", 6), ("none", 24), ("prefix", 2)
    ]
    assert s["trainable_params"] == 6 * 131_841 + 2 * 167_937
    s30 = summary("model=smollm2_135m", "method=hlpt", "layer_ratio=layers25pct")
    assert [x["end"] - x["start"] for x in s30["segments"]] == [6, 22, 2]


@pytest.mark.parametrize(
    "spec,message",
    [
        ("3:0", "'0'.*not a positive integer"),
        ("3:-1", "not a positive integer"),
        ("3:x", "not a positive integer"),
        ("3:1.5", "not a positive integer"),
        ("3:4:1", "has 3 segments but method 'hlpt' takes 2"),
        ("lora_ffn:3,bogus:1", "unknown module 'bogus'"),
        ("lora_ffn:3,1", "mixes named parts"),
    ],
)
def test_invalid_ratios_name_the_bad_value(spec, message):
    with pytest.raises(PlanError, match=message):
        build_plan(HLPT, 32, ratio=spec)


def test_invalid_methods_and_options():
    with pytest.raises(PlanError, match="unknown module 'lorra'"):
        build_plan({**HLPT, "bottom": "lorra"}, 32)
    with pytest.raises(PlanError, match="unknown option.*rank"):
        build_plan({"name": "lora", "module": "lora", "options": {"lora": {"rank": 4}}}, 32)
    with pytest.raises(PlanError, match="prefix.num_tokens=0"):
        build_plan({"name": "prefix", "module": "prefix", "options": {"prefix": {"num_tokens": 0}}}, 32)
    with pytest.raises(PlanError, match="leaves the 'prefix' segment empty on a 4-layer model"):
        build_plan({**HLPT, "middle": "none", "ratio": "3:4:1"}, 4)


def test_parse_parts_forms():
    assert parse_parts("5:27") == [(None, 5), (None, 27)]
    assert parse_parts({"parts": [3, 4, 1]}) == [(None, 3), (None, 4), (None, 1)]
    assert parse_parts("lora_ffn:6,none:24,prefix:2") == [("lora_ffn", 6), ("none", 24), ("prefix", 2)]


def test_plan_json_roundtrip():
    from layerpeft.plan import LayerPlan

    plan = build_plan(HLPT, 8)
    again = LayerPlan.from_dict(plan.to_dict())
    assert again.layers == plan.layers == [["lora_ffn"]] * 6 + [["prefix"]] * 2
    assert again.options == plan.options
