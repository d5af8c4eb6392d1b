"""The benchmark's record as a short table on the terminal."""

from __future__ import annotations


def _side(name: str, side: dict) -> str:
    return (f"  {name:28s} {side['denoise_its']:8.3f} it/s  {side['seconds_per_image']:8.3f} s/image  "
            f"peak {side['peak_memory_gb']:6.2f} GB (+{side['peak_above_start_gb']:.2f} GB in the run)")


def _difference(diff: dict) -> str:
    if not diff.get("same_size", False):
        return "images differ in size"
    if diff["identical"]:
        return "images identical"
    return (f"image difference: mean {diff['mean_abs']:.3f}, max {diff['max_abs']:.0f} of 255, "
            f"PSNR {diff['psnr_db']:.1f} dB")


def print_report(record: dict) -> None:
    settings = record["settings"]
    print(f"\n{settings['family']} {'(tiny) ' if settings['tiny'] else ''}{settings['size']}x{settings['size']}, "
          f"{settings['steps']} steps, {settings['sampler']}, CFG {settings['cfg']}"
          f"{', distilled CFG ' + str(settings['distilled_cfg']) if settings['family'] == 'flux-dev' else ''}, "
          f"on {settings['device']}, median of {settings['repeats']}")
    if record.get("reduced_depth"):
        print(f"  {record['reduced_depth']}")
    checkpoint = record["checkpoint"]
    print(f"  checkpoint: {checkpoint['bytes'] / 2**30:.2f} GB, loaded in {checkpoint['load_s']:.1f} s, "
          f"weights match the file: {checkpoint['weights_match_file']}")
    for key, label in (("engine", "engine (default settings)"), ("engine_compiled", "engine + torch_compile")):
        result = record.get(key)
        if result is None:
            continue
        print(_side("plain diffusers", result["plain"]))
        print(_side(label, result))
        print(f"  {'':28s} ratio engine/plain: {result['its_ratio']:.3f}x it/s, "
              f"{result['seconds_ratio']:.3f}x seconds per image; CPU time {result['cpu_step_ratio']:.3f}x "
              f"per step, {result['cpu_seconds_ratio']:.3f}x per image")
        print(f"  {'':28s} {_difference(result['image_difference'])}")
        if result.get("denoiser_calls") != result["plain"].get("denoiser_calls"):
            print(f"  {'':28s} denoiser calls per image differ: plain {result['plain'].get('denoiser_calls')}, "
                  f"engine {result.get('denoiser_calls')} (it/s counts calls)")
        if result.get("text_encoder_calls") != result["plain"].get("text_encoder_calls"):
            print(f"  {'':28s} text encoder calls per image: plain {result['plain'].get('text_encoder_calls')}, "
                  f"engine {result.get('text_encoder_calls')}")
        if result.get("host_syncs_in_denoise") is not None:
            print(f"  {'':28s} host syncs while denoising: plain {result['plain']['host_syncs_in_denoise']}, "
                  f"engine {result['host_syncs_in_denoise']}")
        if result.get("compile_s"):
            print(f"  {'':28s} compile warm-ups (s): {result['compile_s']}")
    for name, result in record.get("ablation", {}).items():
        print(f"  {name:28s} {result['denoise_its']:8.3f} it/s  {result['seconds_per_image']:8.3f} s/image")
    modes = record.get("memory_modes")
    if modes:
        for name, result in modes.items():
            if name != "note":
                print(f"  memory mode {name:16s} {result['denoise_its']:8.3f} it/s  {result['seconds']:8.3f} s/image  "
                      f"peak {result['peak_gib']:6.2f} GB (at rest {result['resident_gib']:.2f} GB)  "
                      f"{result['ratio_to_none']:.2f}x none's time")
        if "note" in modes:
            print(f"  ({modes['note']})")
    api = record.get("api")
    if api:
        print(f"  API: engine direct {api['engine_direct_s']:.3f} s, POST /sdapi/v1/txt2img {api['api_s']:.3f} s; "
              f"outside the job {api['engine_outside_job_s'] * 1000:.1f} ms vs {api['api_outside_job_s'] * 1000:.1f} ms: "
              f"the API adds {api['overhead_s'] * 1000:.1f} ms ({api['overhead_pct']:.2f}% of the image time; "
              f"wall clock {api['wall_overhead_pct']:.1f}%, CPU time {api['cpu_overhead_pct']:.1f}%)")
        print(f"  {'':28s} {_difference(api['image_difference_api_vs_engine'])}")
