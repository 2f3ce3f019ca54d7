# The all-in-one host: every formula on every minion of this master.
base:
  '*':
    - common
    - docker
    - consul
    - haproxy
    - cabify
