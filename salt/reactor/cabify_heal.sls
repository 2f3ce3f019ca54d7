{#- A replica of a pool started, died or stays critical, or a release that died left
    something behind (cabify_docker beacon): hand off to the heal orchestration for the
    minion that saw it. -#}
cabify-reactor-heal-orchestrated:
  runner.state.orchestrate:
    - args:
      - mods: orch.heal
      - pillar:
          heal:
            minion: {{ data["id"] | json }}
            pool: {{ data["pool"] | json }}
            action: {{ data["action"] | json }}
            replace_critical: {{ data["action"] == "critical" }}
