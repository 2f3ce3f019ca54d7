# What a load balancer's minion runs on its own (hosts with the `lb` role).
schedule:
  # HAProxy's knowledge of every server (address, state, weight) saved every few
  # seconds: a HAProxy restarted by hand, or after a crash, while Consul is down
  # starts from it and serves the last known replicas (the haproxy formula also saves
  # it before each reload it makes).
  haproxy-save-server-state:
    function: cabify_lb.save_server_state
    seconds: 5
    maxrunning: 1
    return_job: false
