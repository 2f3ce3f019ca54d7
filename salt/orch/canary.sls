{#- A canary release of one pool across the fleet, decided by the release controller
    on the master (_runners/cabify_controller.py): the canaries, placed round the app
    hosts, get each step's share of the requests beside every stable replica, judged
    on the figures of every LB summed; a canary any LB takes out for failing answers
    is out of every LB at once and the release ends; then promotion rolls the new
    version out (its share only rises).
      salt-run state.orchestrate orch.canary pillar='{"release": {"pool": "cabify", "version": "2"} }'
    release:canary overrides the pool's canary settings (replicas, steps, analysis,
    auto_promote, promote_timeout), release:settings the release settings,
    release:env the replicas' environment. `salt-run cabify.promote`, `cabify.abort`,
    `cabify.pause` and `cabify.resume` act on it. -#}
{%- from "orch/release.jinja" import release_state with context %}
{{ release_state("canary") }}
