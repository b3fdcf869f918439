"""What each arm of the flow trains on, how its policy is obtained, and what that cost.

Functions of the running flow (``flow``: the ``SSOFlow`` task), kept beside it to keep the flow file
the DAG: an arm's spec comes from :func:`sso.arms.plan_run` of the run's config; its data are run
artifacts (a generator variant's pairs, ``pbaa_pairs``, ``sso_triples``, or an online iteration's
triples); an online iteration's policy was trained in the loop, every other arm's here, and
:func:`resampler` gives the loop the sampling of its next iteration.
"""


def arm_spec(flow, arm: str):
    """The arm's :class:`sso.arms.Arm` in this run's plan."""
    from sso.arms import plan_run

    return plan_run(flow.conf).arms[arm]


def arm_data(flow, arm: str):
    """What an arm trains on: its pairs (a generator's, or an artifact's) or its triples."""
    spec = arm_spec(flow, arm)
    if spec.kind == "iteration":
        return flow.online_training_data[spec.iteration - 1]
    return flow.generator_pairs[spec.generator] if spec.generator else getattr(flow, spec.pairs)


def arm_pairs(flow, arm: str):
    """The preference pairs of an arm (chosen = y+, rejected = y- of triples): the data whose
    accuracy the judge measures."""
    from sso.generation.shards import triples_as_pairs

    data = arm_data(flow, arm)
    return triples_as_pairs(data) if "y_plus" in data.columns else data


def arm_training(flow, arm: str):
    """(adapter, history, summary) of an arm's policy: trained here, or (online iterations)
    as trained in the loop."""
    from sso.arms import arm_policy_config
    from steps.train_policy import train_policy

    spec = arm_spec(flow, arm)
    if spec.kind == "iteration":
        t = spec.iteration - 1
        return flow.online_policies[t], flow.online_histories[t], flow.online_summaries[t]
    policy = arm_policy_config(flow.conf.policy, spec)
    return flow.train(f"Policy {arm} ({policy.loss})", policy, train_policy, arm, arm_data(flow, arm))


def arm_costs(flow, arm: str) -> dict:
    """The arm's data source and training cost (policy and, when it has one, generator)."""
    from sso.report.results import arm_info

    spec = arm_spec(flow, arm)
    generator = flow.generator_summaries.get(spec.generator, {}) if spec.generator else {}
    earlier = flow.online_summaries[:spec.iteration] if spec.kind == "iteration" else [flow.policy_summary]
    if spec.kind == "iteration":       # iterative SSO: the iterations' generators, summed
        generator = {"seconds": sum(s.get("generator_seconds", 0.0) for s in earlier),
                     "tokens": sum(s.get("generator_tokens", 0) for s in earlier)}
    return arm_info(spec, flow.conf, generator, earlier)



def resampler(flow):
    """``resample(adapter, t)`` for the online loop: the triples (and report) that the policy
    ``adapter`` samples for iteration t + 1 over the run's shards (one sampler for all of them,
    no eval rows), with seed ``[run] seed + t``; joined and filtered as ``join_samples`` does."""
    from sso.generation.sampling import make_sampler
    from sso.generation.shards import merged_shard
    from steps.join_samples import join_samples
    from steps.sample_responses import sample_responses

    cfg, model_path, shards, queries = flow.conf, flow.model_path, flow.shards, flow.queries

    def resample(adapter, t: int):
        cfg_t = cfg.replace(**{"run.seed": cfg.run.seed + t})
        sampler = make_sampler(cfg.sampling, model_path, cfg.model, adapter=adapter, seed=cfg_t.run.seed)
        try:
            result = sample_responses(merged_shard(shards), cfg_t, model_path, sampler=sampler)
        finally:
            sampler.close()
        out = join_samples([result], queries, capped=cfg.sampling.capped)
        return out["sso_triples"], {**out["sampling_report"], "iteration": t + 1}

    return resample


def run_iteration(flow, t: int, init) -> dict:
    """Iteration ``t`` of the loop: online SSO (one training) or iterative published SSO (the
    generator from the last policy, its pairs, the policy on them); what ``record_iteration`` takes."""
    from steps.online_iteration import iteration_generator, iteration_policy, online_iteration

    cfg, triples = flow.conf, flow.iteration_triples
    if cfg.run.mode == "online":
        adapter, history, summary = flow.train(f"Online iteration {t}", cfg.policy, online_iteration, t, init, triples)
        return {"adapter": adapter, "history": history, "summary": summary, "training_data": triples}
    gen, gen_history, gen_summary = flow.train(f"Iteration {t}: generator (SSO loss)", cfg.generator,
                                                iteration_generator, t, init, triples)
    pairs, report = generator_pairs(flow, gen, t)
    adapter, history, summary = flow.train(f"Iteration {t}: policy ({cfg.policy.loss})", cfg.policy,
                                           iteration_policy, t, init, pairs)
    summary = {**summary, "generator_seconds": gen_summary["seconds"], "generator_tokens": gen_summary["tokens"],
               "generator_final_loss": gen_summary["final_loss"], "preference_report": report}
    return {"adapter": adapter, "history": history, "summary": summary, "training_data": pairs,
            "generator_adapter": gen, "generator_history": gen_history}


def generator_pairs(flow, generator_adapter, t: int):
    """The pairs the generator of iteration ``t`` samples over every train query (seed + t)."""
    from sso.generation.shards import merged_shard
    from steps.generate_preferences import generate_preferences
    from steps.join_preferences import join_preferences

    cfg_t = flow.conf.replace(**{"run.seed": flow.conf.run.seed + t})
    frame = generate_preferences(merged_shard(flow.shards), generator_adapter, cfg_t, flow.model_path)
    return join_preferences([frame], flow.queries, capped=flow.conf.sampling.capped)
