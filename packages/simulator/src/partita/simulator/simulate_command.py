"""``partita simulate``: predict one iteration of a plan, with a trace and plots on request."""

from __future__ import annotations

import argparse

from partita.formats.cli import EXIT_OK, Command


def _add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--plan", required=True, metavar="P", help="plan file")
    from partita.simulator.profile_inputs import add_profile_arguments

    add_profile_arguments(parser)
    parser.add_argument(
        "--model", required=True, metavar="DESC|PRESET", help="model description or preset"
    )
    parser.add_argument("--trace", metavar="FILE", help="write a Chrome trace (Perfetto)")
    parser.add_argument("--plot", metavar="PNG", help="write the pipeline timeline")
    parser.add_argument("--memory-plot", metavar="PNG", help="write the memory per stage")


def _run(args: argparse.Namespace) -> int:
    from partita.formats import Plan, load
    from partita.simulator.model_source import load_model_description
    from partita.simulator.plots import plot_memory, plot_timeline
    from partita.simulator.profile_inputs import load_profiles
    from partita.simulator.report import summary
    from partita.simulator.simulation import simulate
    from partita.simulator.trace import write_chrome_trace

    plan = load(args.plan, Plan)
    model = load_model_description(args.model)
    # A spec sheet is priced at the plan's own precision.
    profiles = load_profiles(
        args,
        model,
        world_size=plan.world_size,
        precision=plan.precision,
        precision_source=f"{args.plan}: precision",
    )
    hardware = profiles.hardware
    result = simulate(plan, hardware=hardware, model_profile=profiles.model_profile, model=model)
    print(summary(result, device_memory_bytes=hardware.device.memory_bytes))
    if args.trace:
        print(f"trace: {write_chrome_trace(result, args.trace)} (open in ui.perfetto.dev)")
    if args.plot:
        print(f"timeline: {plot_timeline(result, args.plot)}")
    if args.memory_plot:
        # A device far larger than the peak would flatten the bars to nothing: draw its line
        # only when it is within sight of the data.
        device = hardware.device.memory_bytes
        budget = device if device <= 4 * max(result.peak_memory_bytes) else None
        print(f"memory: {plot_memory(result, args.memory_plot, budget_bytes=budget)}")
    return EXIT_OK


COMMAND = Command(
    name="simulate",
    help="predict iteration time and memory of a plan with the event simulation",
    add_arguments=_add_arguments,
    run=_run,
)
