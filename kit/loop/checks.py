"""When a run checks its validation loss near its target: the late checks and how far a screen lets the next
ones pass. Pure functions without torch, shared by the training loop and by compare.py, which replays recorded
runs' screens under other settings."""


def late_check_due(step: int, max_steps: int, val_every: int, late_val_frac: float, late_val_every: int) -> bool:
    """Every val_every steps, and every late_val_every steps over the last late_val_frac of the run."""
    late = step >= (1 - late_val_frac) * max_steps
    every = late_val_every if late else val_every
    return every > 0 and step % every == 0


def screen_skip_steps(step: int, loss: float, last_screen, target: float, margin: float, skip: float) -> int:
    """Steps whose checks a screen above target + margin lets pass unscreened: `skip` times the steps the loss
    needs to reach target + margin at its fall per step since the last screen (last_screen: (step, loss) or None;
    0.5: as though it fell twice as fast). 0 without an earlier screen or where the loss did not fall."""
    if not skip or last_screen is None or last_screen[0] >= step:
        return 0
    last_step, last_loss = last_screen
    fall_per_step = (last_loss - loss) / (step - last_step)
    if fall_per_step <= 0:
        return 0
    return int(skip * (loss - target - margin) / fall_per_step)


def interpolated(losses: dict, step: int) -> float:
    """A loss at a step from losses recorded at other steps: linear between the nearest two, extended along the
    last two's line beyond them."""
    steps = sorted(losses)
    if step in losses or len(steps) == 1:
        return losses.get(step, losses[steps[0]])
    below, above = [s for s in steps if s < step], [s for s in steps if s > step]
    a, b = (below[-1], above[0]) if below and above else (steps[-2], steps[-1]) if below else (steps[0], steps[1])
    return losses[a] + (losses[b] - losses[a]) * (step - a) / (b - a)


def replay_checks(screens: dict, fulls: dict, check_steps: list, target: float, margin: float, skip: float, offset: float):
    """A recorded run's checks under another margin and skip: (screens run, full validations run, the step the
    target is measured crossed or None). Screen losses between the recorded ones are interpolated; a full
    validation not recorded is the screen less `offset` (the runs' mean excess of the screen)."""
    next_screen, last, counted = 0, None, [0, 0]
    for step in check_steps:
        if step < next_screen and step != check_steps[-1]:
            continue
        loss = interpolated(screens, step)
        counted[0] += 1
        if loss > target + margin:
            next_screen = step + screen_skip_steps(step, loss, last, target, margin, skip)
            last = (step, loss)
            continue
        last = (step, loss)
        counted[1] += 1
        if fulls.get(step, loss - offset) <= target:
            return counted[0], counted[1], step
    return counted[0], counted[1], None
